#!/usr/bin/env python3
"""Stream generated data through zstd, xz or gzip with ``writer()``, then verify it round-trips.

    python recipes/compress.py [--size 256M] [--codec zstd|xz|gzip] [--level N] [--output FILE]

The input (``--size`` bytes, 256 MiB by default) is generated block by block
and never held in memory: each block is written to the compressor's stdin with
``Proc.writer()`` as soon as it exists, and hashed on the way. The compressed
stream goes to a file (``--output``, default a temporary one) and, through an
``on_stdout`` chunk callback, to a byte counter, so progress shows bytes in,
bytes out, the ratio so far and the rate while it runs. Then ``codec -d``
decompresses the file and its output is hashed as it arrives with
``chunks()``; the two sha256 digests must match. Exits 0 when they do, 1 when
they do not or a command failed.

What it shows:

* ``writer()``: each ``write()`` blocks while the compressor is busy
  (backpressure, so memory stays flat) but can never deadlock, because the
  compressor's stdout and stderr are drained meanwhile;
* a tee of stdout into a file and a callback (``stdout_path`` + ``on_stdout``);
* ``chunks()`` to consume a child's output incrementally;
* honest errors: a failing compressor raises ``ExitError`` with its stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from procflow import Proc, ProcError

MiB = 1 << 20
BLOCK = 1 << 20
CODECS = ("zstd", "xz", "gzip")

Progress = Callable[[str], object]


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``100k`` or a number of bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256M, 1G, 4096)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def generate(size: int, seed: int = 1) -> Iterator[bytes]:
    """``size`` bytes of compressible log-like text, one block at a time (never all in memory)."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(512)
    ]
    # A pool of distinct 64 KiB pieces; each block is a different arrangement of them.
    pool = []
    for _ in range(32):
        text = " ".join(rng.choice(words) for _ in range(14000)).encode()
        pool.append(text[: 1 << 16])
    left = size
    n = 0
    while left > 0:
        header = f"\n--- block {n} ---\n".encode()
        parts = [header]
        filled = len(header)
        while filled < BLOCK:
            piece = pool[rng.randrange(len(pool))]
            parts.append(piece)
            filled += len(piece)
        block = b"".join(parts)[: min(BLOCK, left)]
        left -= len(block)
        n += 1
        yield block


def compress(
    codec: str,
    level: int | None,
    blocks: Iterator[bytes],
    output: str,
    *,
    progress: Progress = print,
    interval: float = 0.5,
) -> tuple[int, int, str]:
    """Compress ``blocks`` into ``output`` through ``codec``; returns (bytes in, bytes out, sha256 of input)."""
    argv = [codec, "-c"]
    if level is not None:
        argv.append(f"-{level}")
    if codec == "zstd":
        argv.append("-q")
    out_bytes = 0
    lock = threading.Lock()

    def count(chunk: bytes) -> None:  # runs on procflow's drain thread
        nonlocal out_bytes
        with lock:
            out_bytes += len(chunk)

    proc = Proc(*argv).stdout_path(output).on_stdout(count, lines=False).stderr_capture(max_bytes=MiB)
    digest = hashlib.sha256()
    in_bytes = 0
    started = last = time.monotonic()
    with proc.writer() as w:  # close() at the end of the block sends EOF and waits; ExitError on failure
        for block in blocks:
            digest.update(block)
            w.write(block)  # blocks while the compressor is busy: memory stays flat
            in_bytes += len(block)
            now = time.monotonic()
            if now - last >= interval:
                last = now
                with lock:
                    done_out = out_bytes
                progress(status(in_bytes, done_out, now - started))
    progress(status(in_bytes, out_bytes, time.monotonic() - started) + "  done")
    return in_bytes, out_bytes, digest.hexdigest()


def status(in_bytes: int, out_bytes: int, elapsed: float) -> str:
    ratio = in_bytes / out_bytes if out_bytes else float("inf")
    rate = in_bytes / MiB / elapsed if elapsed > 0 else 0.0
    return (
        f"in {in_bytes / MiB:8.1f} MiB  out {out_bytes / MiB:7.2f} MiB  "
        f"ratio {ratio:6.1f}x  {rate:7.1f} MiB/s"
    )


def decompressed_digest(codec: str, path: str) -> tuple[int, str]:
    """Decompress ``path`` and hash the output as it streams; returns (bytes, sha256)."""
    digest = hashlib.sha256()
    n = 0
    with Proc(codec, "-d", "-c").stdin_path(path).stderr_capture(max_bytes=MiB).chunks() as chunks:
        for chunk in chunks:
            digest.update(chunk)
            n += len(chunk)
    return n, digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=256 * MiB, help="bytes to generate (default 256M)")
    parser.add_argument("--codec", choices=CODECS, default="zstd", help="compressor (default zstd)")
    parser.add_argument("--level", type=int, default=None, help="compression level (default: the codec's)")
    parser.add_argument("--output", help="compressed file to write (default: a temporary one)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between progress lines")
    args = parser.parse_args(argv)

    tty = sys.stdout.isatty()

    def show(line: str) -> None:
        print(line, end="\r" if tty and not line.endswith("done") else "\n", flush=True)

    suffix = {"zstd": "zst", "xz": "xz", "gzip": "gz"}[args.codec]
    with tempfile.TemporaryDirectory(prefix="procflow-compress-") as work:
        output = args.output or os.path.join(work, f"data.{suffix}")
        print(f"compressing {args.size / MiB:.1f} MiB of generated text with {args.codec} into {output}")
        try:
            n_in, n_out, want = compress(
                args.codec, args.level, generate(args.size), output, progress=show, interval=args.interval
            )
            on_disk = os.path.getsize(output)
            print(f"compressed: {n_in} bytes -> {n_out} bytes (file: {on_disk} bytes)")
            t = time.monotonic()
            n_back, got = decompressed_digest(args.codec, output)
            print(f"decompressed {n_back} bytes in {time.monotonic() - t:.2f} s")
        except (ProcError, OSError) as e:
            print(f"failed: {e}", file=sys.stderr)
            return 1
    print(f"sha256 in : {want}")
    print(f"sha256 out: {got}")
    if on_disk != n_out:
        print(f"MISMATCH: the callback counted {n_out} bytes, the file has {on_disk}", file=sys.stderr)
        return 1
    if n_back != n_in or got != want:
        print("MISMATCH: the round trip changed the data", file=sys.stderr)
        return 1
    print("OK: the round trip is byte-exact")
    return 0

if __name__ == "__main__":
    sys.exit(main())
