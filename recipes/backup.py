#!/usr/bin/env python3
"""Back up a directory with ``tar | zstd``, restore it with ``zstd -d | tar -x``, check the copy.

    python recipes/backup.py [SOURCE] [ARCHIVE] [RESTORE_DIR] [--level N]

Without SOURCE a sample tree is built (nested folders, text, a binary file, a
symlink, files with their own modes) in a temporary folder. ARCHIVE defaults to
a temporary ``.tar.zst`` and RESTORE_DIR to a fresh temporary folder; a given
RESTORE_DIR must not exist yet or be empty. Exits 0 when the restored tree
equals the original (same entries, same contents by sha256, same modes, same
symlink targets), 1 when it does not or a stage failed.

What it shows:

* two two-stage pipelines whose data never passes through Python: the kernel
  pipe goes from ``tar`` straight to ``zstd`` (and back), the archive is opened
  by procflow and handed to the child (``stdout_path`` / ``stdin_path``);
* progress from a running pipeline without a thread: ``Running.wait(timeout=...)``
  returns every interval, and the figures come from the archive's size and
  from ``tar``'s own I/O counter (``/proc/<pid>/io``);
* honest status: if ``zstd`` or ``tar`` fails, ``ExitError`` names the stage
  and shows its stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from procflow import Proc, ProcError, Result

MiB = 1 << 20

Progress = Callable[[str], object]


# ---------------------------------------------------------------------------------- the pipelines
def backup(
    source: str | os.PathLike[str],
    archive: str | os.PathLike[str],
    *,
    level: int = 3,
    progress: Progress = print,
    interval: float = 0.5,
) -> Result:
    """Archive ``source`` into ``archive`` through ``tar -cf - . | zstd``, reporting progress."""
    total = tree_size(source)
    pipeline = (
        Proc("tar", "-C", source, "-cf", "-", ".") | Proc("zstd", f"-{level}", "-q", "-c")
    ).stdout_path(archive).stderr_capture()
    started = time.monotonic()
    with pipeline.start() as running:
        tar_pid = running.pids[0]
        while True:
            try:
                result = running.wait(timeout=interval)
                break
            except TimeoutError:
                progress(_backup_line(archive, started, total, _bytes_read(tar_pid)))
    progress(_backup_line(archive, started, total, total, done=True))
    return result


def restore(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Result:
    """Unpack ``archive`` into the fresh folder ``dest`` through ``zstd -d | tar -x``."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"restore folder is not empty: {str(dest)!r}")
    dest.mkdir(parents=True, exist_ok=True)
    # -p: keep the archived modes exactly (an unprivileged tar would apply the umask).
    pipeline = Proc("zstd", "-d", "-q", "-c") | Proc("tar", "-x", "-p", "-f", "-", "-C", dest)
    return pipeline.stdin_path(archive).stderr_capture().run()


def _bytes_read(pid: int) -> int | None:
    """How much a child has read so far (its ``rchar``), where /proc tells."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _backup_line(archive: str | os.PathLike[str], started: float, total: int, read: int | None,
                 done: bool = False) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    try:
        written = os.stat(archive).st_size
    except OSError:
        written = 0
    head = "backup: done," if done else "backup:"
    read_part = "" if read is None else f"read {min(read, total) / MiB:.1f} of {total / MiB:.1f} MiB, "
    rate = (total if done else (read or written)) / MiB / elapsed
    return f"{head} {read_part}wrote {written / MiB:.2f} MiB ({written} bytes) in {elapsed:.2f} s, {rate:.1f} MiB/s"


# ---------------------------------------------------------------------------------- comparing trees
Entry = tuple[str, int, str]  # (kind, permission bits, sha256 or link target)


def tree_snapshot(root: str | os.PathLike[str]) -> dict[str, Entry]:
    """Every entry under ``root`` (``.`` included) by relative path: kind, mode, content digest."""
    root = Path(root)
    out: dict[str, Entry] = {}

    def visit(path: Path, rel: str) -> None:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", 0, os.readlink(path))  # a symlink's own mode means nothing on Linux
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            for child in sorted(os.listdir(path)):
                visit(path / child, child if rel == "." else f"{rel}/{child}")
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(MiB):
                    digest.update(block)
            out[rel] = ("file", stat.S_IMODE(st.st_mode), digest.hexdigest())
        else:
            out[rel] = ("other", stat.S_IMODE(st.st_mode), "")

    visit(root, ".")
    return out


def compare_trees(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """The differences between two trees, one line each (empty when they are equal)."""
    sa, sb = tree_snapshot(a), tree_snapshot(b)
    diffs = [f"only in {a}: {p}" for p in sorted(sa.keys() - sb.keys())]
    diffs += [f"only in {b}: {p}" for p in sorted(sb.keys() - sa.keys())]
    for p in sorted(sa.keys() & sb.keys()):
        (ka, ma, ca), (kb, mb, cb) = sa[p], sb[p]
        if ka != kb:
            diffs.append(f"{p}: {ka} vs {kb}")
        elif ma != mb:
            diffs.append(f"{p}: mode {ma:o} vs {mb:o}")
        elif ca != cb:
            diffs.append(f"{p}: {'target' if ka == 'symlink' else 'content'} differs")
    return diffs


def tree_size(root: str | os.PathLike[str]) -> int:
    """Bytes in the regular files under ``root`` (symlinks not followed)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


# ---------------------------------------------------------------------------------- a sample tree
def make_sample_tree(root: str | os.PathLike[str], size: int = 4 * MiB, seed: int = 1) -> Path:
    """Build a tree worth backing up: nested folders, text, binary, a symlink, modes, odd names."""
    rng = random.Random(seed)
    root = Path(root)
    deep = root / "src" / "pkg" / "sub"
    deep.mkdir(parents=True)
    (root / "empty-dir").mkdir()
    words = ["alpha", "beta", "gamma", "delta", "pipe", "fork", "exec", "wait", "reap"]
    text = "".join(f"{i:06d} {' '.join(rng.choices(words, k=8))}\n" for i in range(size // 2 // 60))
    (root / "src" / "log.txt").write_text(text)
    (deep / "data.bin").write_bytes(rng.randbytes(size // 2))  # incompressible
    (deep / "empty").write_bytes(b"")
    (root / "src" / "pkg" / "naïve name with spaces.txt").write_text("unicode and spaces\n")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    secret = root / "src" / "private.key"
    secret.write_bytes(rng.randbytes(512))
    secret.chmod(0o600)
    (root / "latest.bin").symlink_to(Path("src") / "pkg" / "sub" / "data.bin")
    (root / "dangling").symlink_to("does-not-exist")
    (root / "src" / "readonly-dir").mkdir(mode=0o750)
    (root / "src" / "readonly-dir").chmod(0o750)
    return root


# ---------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", nargs="?", help="folder to back up (default: a generated sample tree)")
    parser.add_argument("archive", nargs="?", help="archive to write (default: a temporary .tar.zst)")
    parser.add_argument("restore", nargs="?", help="fresh folder to restore into (default: a temporary one)")
    parser.add_argument("--level", type=int, default=3, help="zstd compression level (default 3)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between progress lines")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="procflow-backup-") as work:
        source = args.source
        if source is None:
            source = str(make_sample_tree(Path(work) / "sample"))
            print(f"sample tree: {source} ({tree_size(source) / MiB:.1f} MiB)")
        archive = args.archive or os.path.join(work, "backup.tar.zst")
        dest = args.restore or os.path.join(work, "restored")
        try:
            result = backup(source, archive, level=args.level, interval=args.interval)
            tar, zstd = result.stages
            print(f"archive: {archive}, {os.path.getsize(archive)} bytes "
                  f"(tar cpu {tar.cpu_time:.2f} s, zstd cpu {zstd.cpu_time:.2f} s)")
            t = time.monotonic()
            restore(archive, dest)
            print(f"restored into {dest} in {time.monotonic() - t:.2f} s")
        except (ProcError, OSError) as e:
            print(f"backup failed: {e}", file=sys.stderr)
            return 1
        diffs = compare_trees(source, dest)
        if diffs:
            print(f"restored tree differs from {source}:", file=sys.stderr)
            for d in diffs:
                print(f"  {d}", file=sys.stderr)
            return 1
        print(f"restored tree is identical: {len(tree_snapshot(dest))} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
