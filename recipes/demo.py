#!/usr/bin/env python3
"""procflow in one minute: Python data through real tools, with nothing hidden.

Run it with ``python3 tasks.py demo`` (sets up .venv first) or directly.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil

from procflow import ExitError, Proc, ProcTimeout


def log_lines(n: int, seed: int = 7) -> Iterator[str]:
    """A generator of fake access-log lines: never held in memory as a whole."""
    rng = random.Random(seed)
    paths = ["/", "/login", "/api/items", "/api/items/42", "/static/app.js", "/health"]
    weights = [30, 5, 25, 10, 20, 10]
    for i in range(n):
        path = rng.choices(paths, weights)[0]
        yield f"10.0.{i % 256}.{rng.randrange(256)} GET {path} {rng.choice((200, 200, 200, 404, 500))}\n"


def step(title: str) -> None:
    print(f"\n== {title}")


def word_count() -> None:
    step("1. a generator fed to a pipeline: cut | sort | uniq -c | sort -rn | head")
    top = (
        Proc("cut", "-d", " ", "-f", "3")
        | Proc("sort")
        | Proc("uniq", "-c")
        | Proc("sort", "-rn")
        | Proc("head", "-3")
    ).input(log_lines(200_000))
    t = time.monotonic()
    result = top.stdout_capture().text().run()
    print(result.stdout.rstrip())
    print(f"   5 processes, kernel pipes between them, {time.monotonic() - t:.2f} s; "
          f"stages: {[r.argv[0] for r in result.stages]}")


def compress(tmp: str) -> None:
    step("2. writer(): stream 64 MiB of Python data into gzip, then verify by decompressing")
    path = os.path.join(tmp, "data.gz")
    digest = hashlib.sha256()
    total = 0
    t = time.monotonic()
    with Proc("gzip", "-c", "-1").stdout_path(path).writer() as w:
        for block in range(64):
            chunk = hashlib.sha256(str(block).encode()).digest() * (1 << 15)  # 1 MiB, compressible
            digest.update(chunk)
            w.write(chunk)
            total += len(chunk)
    took = time.monotonic() - t
    size = os.path.getsize(path)
    print(f"   {total / 2**20:.0f} MiB in -> {size / 2**10:.0f} KiB out ({took:.2f} s, "
          f"{total / took / 2**20:.0f} MiB/s), gzip exit {w.result.returncode if w.result else '?'}")
    check = hashlib.sha256()
    with Proc("gzip", "-dc").stdin_path(path).chunks() as chunks:
        for c in chunks:
            check.update(c)
    print(f"   round trip: {'identical' if check.digest() == digest.digest() else 'DIFFERENT'} "
          f"(sha256 {check.hexdigest()[:16]}...)")


def failure() -> None:
    step("3. a failing stage says what failed: which command, which stage, which status, its stderr")
    try:
        (Proc("printf", "a\\nb\\n") | Proc("sh", "-c", "echo 'bad input on line 2' >&2; exit 3") | Proc("cat")) \
            .stderr_capture().run()
    except ExitError as e:
        print("   ExitError: " + str(e).replace("\n", "\n   "))


def timeout() -> None:
    step("4. a timeout stops the whole process tree, grandchildren included")
    cmd = Proc("sh", "-c", "sleep 60 & sleep 60 & echo started; wait").stdout_capture().timeout(0.5).kill_grace(1)
    t = time.monotonic()
    try:
        cmd.run()
    except ProcTimeout as e:
        sh_pid = e.result.pid
        alive = [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "60"]
                 and p.ppid() in (sh_pid, 1)]
        print(f"   ProcTimeout after {time.monotonic() - t:.2f} s; returncode {e.result.returncode}; "
              f"output so far {e.result.stdout!r}; sleeps still alive: {alive or 'none'}")


def command_line() -> None:
    step("5. the command line: procflow run --summary -- seq 200000 '|' gzip '|' wc -c")
    subprocess.run(
        [sys.executable, "-m", "procflow", "run", "--summary", "--", "seq", "200000", "|", "gzip", "|", "wc", "-c"],
        check=True,
    )


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # interleave with the children's output
    print("procflow demo: Python data through real tools")
    word_count()
    with tempfile.TemporaryDirectory() as tmp:
        compress(tmp)
    failure()
    timeout()
    command_line()
    print("\nall done: no temporary files, no leaked processes, no hidden failures.")


if __name__ == "__main__":
    main()
