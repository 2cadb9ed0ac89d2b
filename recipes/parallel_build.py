#!/usr/bin/env python3
"""Compile a set of C files in parallel with ``cc``, fail fast, and print a summary table.

    python recipes/parallel_build.py [DIR] [--out DIR] [--jobs N] [--broken] [--cc CC]

Every ``*.c`` file of DIR is compiled into a program of the same name (one
``cc`` per file) with :func:`procflow.run_all`, at most ``--jobs`` at a time
(default: the CPU count). Without DIR a few sample programs are generated in a
temporary directory; ``--broken`` adds one with a syntax error (also to DIR's
files, from a temporary directory). Programs go to
``--out`` (default: DIR/build; the temporary directory, removed at the end,
when DIR is not given).

What it shows:

* ``run_all`` with fail-fast: the first compiler error stops the compilers
  still running (their process trees are stopped and reaped), those not
  started yet never start, and the error is raised with the compiler's own
  message (the tail of its captured stderr);
* ``on_stderr`` as a live, per-target log: each line a compiler writes is
  printed as it arrives, prefixed with its target, so parallel output stays
  readable (the callbacks run on procflow's drain threads, hence the lock);
* the ``Result`` of each job: duration, CPU time and peak RSS (from
  ``wait4``) in a summary table.

Exits 0 when everything compiled, 1 when a compiler failed (or could not be
started), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from procflow import ExitError, Proc, ProcError, Result, run_all

#: Sample programs: file name -> (source, the line the program prints).
SAMPLES: dict[str, tuple[str, str]] = {
    "hello.c": (
        '#include <stdio.h>\nint main(void) { puts("hello, world"); return 0; }\n',
        "hello, world",
    ),
    "fib.c": (
        "#include <stdio.h>\n"
        "static long fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\n"
        'int main(void) { printf("fib(30) = %ld\\n", fib(30)); return 0; }\n',
        "fib(30) = 832040",
    ),
    "primes.c": (
        "#include <stdio.h>\n#include <string.h>\n"
        "static char composite[100000];\n"
        "int main(void) {\n"
        "    int count = 0;\n"
        "    for (int i = 2; i < 100000; i++) {\n"
        "        if (composite[i]) continue;\n"
        "        count++;\n"
        "        for (long j = (long)i * i; j < 100000; j += i) composite[j] = 1;\n"
        "    }\n"
        '    printf("%d primes below 100000\\n", count);\n'
        "    return 0;\n"
        "}\n",
        "9592 primes below 100000",
    ),
    "sort.c": (
        "#include <stdio.h>\n#include <stdlib.h>\n"
        "static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }\n"
        "int main(void) {\n"
        "    int v[1000];\n"
        "    for (int i = 0; i < 1000; i++) v[i] = (i * 7919) % 1000;\n"
        "    qsort(v, 1000, sizeof v[0], cmp);\n"
        "    for (int i = 0; i < 1000; i++) if (v[i] != i) return 1;\n"
        '    puts("sorted 1000 numbers");\n'
        "    return 0;\n"
        "}\n",
        "sorted 1000 numbers",
    ),
    "collatz.c": (
        "#include <stdio.h>\n"
        "int main(void) {\n"
        "    long n = 27; int steps = 0;\n"
        "    while (n != 1) { n = n % 2 ? 3 * n + 1 : n / 2; steps++; }\n"
        '    printf("27 reaches 1 in %d steps\\n", steps);\n'
        "    return 0;\n"
        "}\n",
        "27 reaches 1 in 111 steps",
    ),
    # Compiles, with a warning under -Wall: its lines show up prefixed with [warn].
    "warn.c": (
        "#include <stdio.h>\n"
        "int main(void) {\n"
        "    int unused;\n"
        '    puts("compiled with a warning");\n'
        "    return 0;\n"
        "}\n",
        "compiled with a warning",
    ),
}

#: A syntax error (the missing semicolon): the compiler says so and exits 1.
BROKEN = ("broken.c", "int main(void)\n{\n    return 0\n}\n")

CFLAGS = ("-O2", "-Wall", "-fdiagnostics-color=never")


def write_samples(directory: Path, broken: bool = False) -> list[Path]:
    """Write the sample C files (and the broken one when asked) into ``directory``."""
    files = [(name, source) for name, (source, _) in SAMPLES.items()]
    if broken:
        files.append(BROKEN)
    paths = []
    for name, source in files:
        path = directory / name
        path.write_text(source)
        paths.append(path)
    return sorted(paths)


class PrefixedLog:
    """Lines from many compilers at once, each printed whole and prefixed with its target."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()  # the callbacks run on several drain threads

    def for_target(self, target: str) -> Callable[[str], None]:
        def emit(line: str) -> None:
            with self.lock:
                self.stream.write(f"[{target}] {line}\n")
                self.stream.flush()

        return emit


def compile_command(cc: str, source: Path, out_dir: Path, log: PrefixedLog) -> Proc:
    """``cc -O2 -Wall -o OUT/name name.c``, its stderr both shown live and captured (for the error)."""
    target = source.stem
    return (
        Proc(cc, *CFLAGS, "-o", out_dir / target, source)
        .stdin_null()
        .stderr_capture(max_bytes=1 << 20)
        .on_stderr(log.for_target(target))
    )


def format_table(rows: Sequence[tuple[str, str, str, str, str]]) -> str:
    header = ("target", "status", "seconds", "CPU s", "max RSS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[i].rjust(widths[i]) for i in range(2, 5)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def describe(result: Result) -> tuple[str, str, str]:
    return f"{result.duration:.2f}", f"{result.cpu_time:.2f}", f"{result.max_rss / (1 << 20):.1f} MiB"


def build(sources: Sequence[Path], out_dir: Path, jobs: int, cc: str, out: TextIO, err: TextIO) -> int:
    """Compile every source; print the compilers' lines, the failure if any, and the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = PrefixedLog(err)
    targets = [s.stem for s in sources]
    started = time.time()
    results: dict[str, Result] = {}
    failed: dict[str, str] = {}
    status = 0
    commands = [compile_command(cc, s, out_dir, log) for s in sources]
    try:
        results.update(zip(targets, run_all(commands, jobs=jobs, fail_fast=True), strict=True))
    except ExitError as e:
        # Fail-fast: the other compilers were stopped; this is the first failure, with its stderr tail.
        target = Path(e.result.argv[-1]).stem
        results[target] = e.result
        failed[target] = "FAILED"
        err.write(f"build failed: {e}\n")
        status = 1
    except ProcError as e:  # the compiler could not be started, a timeout...
        err.write(f"build failed: {e}\n")
        status = 1
    rows = []
    for target in targets:
        result = results.get(target)
        if result is not None:
            rows.append((target, failed.get(target, "ok"), *describe(result)))
            continue
        # Its job's Result went with the fail-fast exception: say what is on disk.
        program = out_dir / target
        done = program.exists() and program.stat().st_mtime >= started - 1
        rows.append((target, "built" if done else "stopped", "-", "-", "-"))
    out.write(format_table(rows) + "\n")
    ok = sum(1 for r in rows if r[1] in ("ok", "built"))
    out.write(f"{ok} of {len(rows)} compiled with {jobs} job(s); programs in {out_dir}\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", type=Path, help="where the *.c files are (default: samples)")
    parser.add_argument("--out", type=Path, help="where the programs go (default: DIR/build)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compilers at once (default: CPUs)")
    parser.add_argument("--broken", action="store_true", help="add a file with a syntax error")
    parser.add_argument("--cc", default=os.environ.get("CC", "cc"), help="the C compiler (default: $CC or cc)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    with ExitStack() as stack:
        if args.directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parallel_build-")))
            sources = write_samples(directory, broken=args.broken)
        else:
            directory = args.directory
            if not directory.is_dir():
                parser.error(f"not a directory: {directory}")
            sources = sorted(directory.glob("*.c"))
            if not sources:
                parser.error(f"no *.c files in {directory}")
            if args.broken:  # written beside, not into, the caller's directory
                extra = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parallel_build-")))
                (extra / BROKEN[0]).write_text(BROKEN[1])
                sources = sorted([*sources, extra / BROKEN[0]], key=lambda p: p.name)
        out_dir = args.out or directory / "build"
        return build(sources, out_dir, args.jobs, args.cc, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
