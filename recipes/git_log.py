#!/usr/bin/env python3
"""Iterate ``git log`` lazily with ``lines()``, stop early, and show nothing is left behind.

    python recipes/git_log.py [--repo PATH] [--commits 5000] [--take 10] [--grep WORD]

Without ``--repo`` a repository with ``--commits`` commits is made in a
temporary folder (quickly: a ``git fast-import`` stream generated in Python
and fed through ``writer()``). Then ``git log`` is iterated with ``lines()``:
the first ``--take`` lines (optionally only those containing ``--grep``) are
printed and the loop is left. ``git`` is still running at that point (its
output does not fit in the pipe: it is blocked writing), so procflow stops it
and reaps it when the ``with`` block ends. The recipe then checks, with
psutil, that the git process is gone and that this process has no child left
and no file descriptor more than before. Exits 0 when all that holds.

What it shows:

* ``lines()`` yields as git writes; nothing is read ahead beyond a pipe's worth;
* leaving the loop early stops and reaps the child and closes every pipe (also
  when the iterator is merely dropped);
* ``writer()`` feeding a Python-generated stream to a tool (``git fast-import``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil

from procflow import Proc, ProcError

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "procflow",
    "GIT_AUTHOR_EMAIL": "procflow@example.invalid",
    "GIT_COMMITTER_NAME": "procflow",
    "GIT_COMMITTER_EMAIL": "procflow@example.invalid",
}


def git(*args: str) -> Proc:
    return Proc("git", *args).env_update(GIT_ENV).env(HOME=tempfile.gettempdir()).stderr_capture(max_bytes=1 << 20)


def fast_import_stream(commits: int) -> Iterator[bytes]:
    """A ``git fast-import`` stream of ``commits`` commits on main, each changing one file."""
    when = 1_700_000_000
    for i in range(1, commits + 1):
        content = f"revision {i}\n".encode()
        message = f"commit {i}: {'fix' if i % 3 else 'feature'} number {i}\n".encode()
        parts = [
            b"commit refs/heads/main\n",
            f"mark :{i}\n".encode(),
            f"committer procflow <procflow@example.invalid> {when + i * 60} +0000\n".encode(),
            f"data {len(message)}\n".encode(), message,
        ]
        if i > 1:
            parts.append(f"from :{i - 1}\n".encode())
        parts += [
            f"M 100644 inline file{i % 50}.txt\n".encode(),
            f"data {len(content)}\n".encode(), content, b"\n",
        ]
        yield b"".join(parts)


def make_repo(path: str, commits: int) -> None:
    """A repository at ``path`` with ``commits`` commits on ``main``, checked out."""
    git("init", "-q", "-b", "main", path).run()
    with git("-C", path, "fast-import", "--quiet").writer() as w:
        for chunk in fast_import_stream(commits):
            w.write(chunk)
    git("-C", path, "checkout", "-q", "main").run()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo", help="an existing repository (default: a generated one)")
    parser.add_argument("--commits", type=int, default=5000, help="commits in the generated repository")
    parser.add_argument("--take", type=int, default=10, help="lines to print before leaving the loop")
    parser.add_argument("--grep", help="print only lines containing this word")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="procflow-gitlog-") as work:
        repo = args.repo
        try:
            if repo is None:
                repo = os.path.join(work, "repo")
                t = time.monotonic()
                make_repo(repo, args.commits)
                print(f"made {repo} with {args.commits} commits in {time.monotonic() - t:.2f} s")
            fds_before = open_fds()
            taken: list[str] = []
            log = git("-C", repo, "log", "--format=%h %ad %s", "--date=short")
            with log.lines() as lines:
                pid = lines.pid
                for line in lines:
                    if args.grep and args.grep not in line:
                        continue
                    print(f"  {line}")
                    taken.append(line)
                    if len(taken) >= args.take:
                        break
                running_at_break = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            # Leaving the `with` stopped and reaped git (if it had not finished by itself).
            result = lines.result
        except (ProcError, OSError) as e:
            print(f"failed: {e}", file=sys.stderr)
            return 1
        problems = []
        status = "finished by itself" if result is None or result.returncode == 0 else (
            f"stopped by procflow (returncode {result.returncode})")
        print(f"left the loop after {len(taken)} lines; git (pid {pid}) was "
              f"{'still running' if running_at_break else 'already done'} then, {status}")
        if psutil.pid_exists(pid) and psutil.Process(pid).ppid() == os.getpid():
            problems.append(f"git (pid {pid}) is still there")
        kids = psutil.Process().children(recursive=True)
        if kids:
            problems.append(f"children left: {[(k.pid, k.name()) for k in kids]}")
        leaked = open_fds() - fds_before
        if leaked:
            problems.append(f"fds left open: {sorted(leaked, key=int)}")
        for p in problems:
            print(f"LEAK: {p}", file=sys.stderr)
        if not problems:
            print(f"OK: git pid {pid} is gone, no child left, no fd leaked")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
