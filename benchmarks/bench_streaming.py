#!/usr/bin/env python3
"""Streaming: the parent's memory while streaming GiBs, and lines() against iterating Popen.stdout.

    python benchmarks/bench_streaming.py [--size 2G] [--tp-size 256M] [--line-length 60] [--reps 3] [--json PATH]

Memory. Each case streams ``--size`` bytes from a child into the parent and
throws them away, in a fresh interpreter of its own (so one case's peak does
not hide another's):

* ``lines()``   ``sh -c 'yes LINE | head -c SIZE'`` iterated with ``Proc.lines()``
* ``chunks()``  ``head -c SIZE /dev/zero`` iterated with ``Proc.chunks()``
* ``reader()``  ``head -c SIZE /dev/zero`` read with ``Proc.reader().readinto()`` into one buffer

Reported per case: the RSS just before the stream starts (psutil), the peak
RSS of the process after it (``getrusage(RUSAGE_SELF).ru_maxrss``), their
difference (the peak growth: an upper bound, the interpreter's own peak
included), and the throughput. Target: < 16 MiB growth each.

Line iteration. ``sh -c 'yes LINE | head -c TP_SIZE'`` (lines of
``--line-length`` bytes with their newline) is iterated, counting lines, by:

* ``lines()``               ``for line in Proc(...).lines()`` (str lines, terminator stripped)
* ``Popen.stdout (binary)`` ``for line in subprocess.Popen(..., stdout=PIPE).stdout`` (bytes lines)
* ``Popen.stdout (text)``   the same with ``text=True`` (str lines, newline kept)

one round per repetition, in an order rotated from round to round, after one
warm-up round; reported: the median time, lines per second and the ratio of
lines()'s throughput to each (>= 0.9 wanted; > 1 means lines() is faster),
and the same for the parent's CPU time (``getrusage(RUSAGE_SELF)``, which a
loaded machine disturbs less than wall time). The like-for-like comparison
is text mode (both give ``str`` lines); binary mode makes ``bytes`` lines,
which CPython creates and splits faster than ``str`` ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procflow import Proc

MiB = 1 << 20
GiB = 1 << 30


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2G, 256M, 4096)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def line_text(length: int) -> str:
    """A line of ``length`` bytes including its newline."""
    base = "the quick brown fox jumps over the lazy dog 0123456789 "
    return (base * (length // len(base) + 1))[: max(1, length - 1)]


def yes_cmd(size: int, length: int) -> list[str]:
    return ["sh", "-c", f"yes '{line_text(length)}' | head -c {size}"]


# ---------------------------------------------------------------------------------- memory cases
def stream_lines(size: int, length: int) -> int:
    n = 0
    for line in Proc(*yes_cmd(size, length)).lines():
        n += len(line) + 1
    return n


def stream_chunks(size: int, length: int) -> int:
    n = 0
    for chunk in Proc("head", "-c", size, "/dev/zero").chunks():
        n += len(chunk)
    return n


def stream_reader(size: int, length: int) -> int:
    n = 0
    buf = bytearray(1 << 16)
    with Proc("head", "-c", size, "/dev/zero").reader() as r:
        while True:
            got = r.readinto(buf)
            if not got:
                break
            n += got
    return n


MEMORY_CASES: dict[str, Callable[[int, int], int]] = {
    "lines()": stream_lines,
    "chunks()": stream_chunks,
    "reader()": stream_reader,
}


def memory_case(name: str, size: int, length: int) -> dict[str, Any]:
    """Run one memory case in this (fresh) interpreter; called through --_case."""
    import psutil

    rss_before = psutil.Process().memory_info().rss
    t = time.perf_counter()
    moved = MEMORY_CASES[name](size, length)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"case": name, "bytes": moved, "seconds": seconds, "rss_before": rss_before, "peak_rss": peak,
            "growth": max(0, peak - rss_before)}


def run_memory_case(name: str, size: int, length: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--_case", name, "--size", str(size), "--line-length", str(length)],
        capture_output=True, text=True, check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------- line iteration
def iter_lines(cmd: list[str]) -> int:
    n = 0
    for _ in Proc(*cmd).lines():
        n += 1
    return n


def iter_popen_binary(cmd: list[str]) -> int:
    n = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        for _ in p.stdout:
            n += 1
    return n


def iter_popen_text(cmd: list[str]) -> int:
    n = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        for _ in p.stdout:
            n += 1
    return n


LINE_CASES: dict[str, Callable[[list[str]], int]] = {
    "lines()": iter_lines,
    "Popen.stdout (binary)": iter_popen_binary,
    "Popen.stdout (text)": iter_popen_text,
}


def line_iteration(size: int, length: int, reps: int) -> dict[str, Any]:
    cmd = yes_cmd(size, length)
    names = list(LINE_CASES)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    counts: dict[str, int] = {}
    for rnd in range(reps + 1):  # round 0 warms up
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for name in order:
            c = self_cpu()
            t = time.perf_counter()
            counts[name] = LINE_CASES[name](cmd)
            if rnd:
                times[name].append(time.perf_counter() - t)
                cpus[name].append(self_cpu() - c)
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the cases counted different numbers of lines: {counts}")
    med = {n: statistics.median(ts) for n, ts in times.items()}
    cpu = {n: statistics.median(cs) for n, cs in cpus.items()}
    return {"bytes": size, "line_length": length, "lines": counts[names[0]], "times": times, "cpu_times": cpus,
            "median": med, "median_cpu": cpu,
            "ratio": {n: med[n] / med["lines()"] for n in names},
            "cpu_ratio": {n: cpu[n] / cpu["lines()"] for n in names}}


def self_cpu() -> float:
    """This process's CPU time (user + system), the children's excluded."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- report
def human(n: float) -> str:
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if abs(n) >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n:.0f} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=2 * GiB, help="bytes per memory case (default 2G)")
    parser.add_argument("--tp-size", type=parse_size, default=256 * MiB,
                        help="bytes per line-iteration run (default 256M)")
    parser.add_argument("--line-length", type=int, default=60, help="bytes per line, newline included (default 60)")
    parser.add_argument("--reps", type=int, default=3, help="line-iteration rounds after the warm-up (default 3)")
    parser.add_argument("--limit", type=parse_size, default=16 * MiB, help="RSS growth allowed (default 16M)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._case:
        print(json.dumps(memory_case(args._case, args.size, args.line_length)))
        return 0

    print(f"python {platform.python_version()} on {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs")
    print(f"\nPeak RSS growth of the parent while streaming {human(args.size)} "
          f"(each case in a fresh interpreter; limit {human(args.limit)}):")
    print(f"  {'case':<10} {'streamed':>10} {'seconds':>8} {'MB/s':>8} {'RSS before':>11} {'peak RSS':>10} "
          f"{'growth':>9}")
    memory = []
    ok = True
    for name in MEMORY_CASES:
        r = run_memory_case(name, args.size, args.line_length)
        memory.append(r)
        within = r["growth"] < args.limit
        ok &= within and r["bytes"] == args.size
        print(f"  {name:<10} {human(r['bytes']):>10} {r['seconds']:8.2f} {r['bytes'] / r['seconds'] / 1e6:8.0f} "
              f"{human(r['rss_before']):>11} {human(r['peak_rss']):>10} {human(r['growth']):>9}"
              f"{'' if within else '  OVER LIMIT'}")

    lines = line_iteration(args.tp_size, args.line_length, args.reps)
    print(f"\nLine iteration: {human(args.tp_size)} of {args.line_length}-byte lines ({lines['lines']} lines), "
          f"median of {args.reps}:")
    print(f"  {'case':<24} {'wall s':>8} {'Mlines/s':>9} {'speed ratio':>12} {'parent CPU s':>13} {'CPU ratio':>10}")
    for name, med in lines["median"].items():
        print(f"  {name:<24} {med:8.3f} {lines['lines'] / med / 1e6:9.2f} {lines['ratio'][name]:11.2f}x "
              f"{lines['median_cpu'][name]:13.3f} {lines['cpu_ratio'][name]:9.2f}x")
    print("  (ratios: lines()'s throughput, or its CPU economy, over the case's; > 1 means lines() does better)")
    text = lines["ratio"]["Popen.stdout (text)"]
    binary = lines["ratio"]["Popen.stdout (binary)"]
    print(f"\nlines() runs at {text:.2f}x iterating Popen.stdout in text mode (str lines, as lines() gives; "
          f"target >= 0.9x) and at {binary:.2f}x binary mode (bytes lines: no decoding, cheaper objects)")
    ok &= text >= 0.9

    if args.json:
        Path(args.json).write_text(json.dumps({"memory": memory, "lines": lines}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
