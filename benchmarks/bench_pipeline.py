#!/usr/bin/env python3
"""Three-stage pipeline throughput: procflow vs bash vs a hand-wired subprocess.Popen chain.

    python benchmarks/bench_pipeline.py [--size BYTES] [--reps N] [--json PATH]

Every case runs ``head -c SIZE /dev/zero | cat | cat > /dev/null``:

* ``procflow``          ``(Proc("head", ...) | Proc("cat") | Proc("cat")).stdout_null().run()``
* ``procflow-1MiB``     the same with ``.pipe_size(1 << 20)`` (F_SETPIPE_SZ between stages)
* ``bash``              ``bash -c 'head -c SIZE /dev/zero | cat | cat > /dev/null'``
* ``popen``             three ``subprocess.Popen`` wired by hand, the parent's copies closed

The cases run side by side: one round runs each case once, in an order rotated
from round to round (so no case always runs first, or right after the same
neighbour), after one warm-up round. Reported per case: median throughput
(GB/s, 1e9 bytes/s) with the min-max spread, the ratio of the median to
bash's, and the parent's CPU time (``getrusage(RUSAGE_SELF)`` delta,
user+sys, median per run) next to the children's (``RUSAGE_CHILDREN``).

The work is kernel-bound: on a small or shared machine the scheduler
dominates, so compare cases within one run, and repeat runs before
believing a difference. ``--json`` writes every sample for another script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procflow import Proc

Case = Callable[[int], None]


def run_procflow(size: int) -> None:
    (Proc("head", "-c", size, "/dev/zero") | Proc("cat") | Proc("cat")).stdout_null().run()


def run_procflow_big_pipes(size: int) -> None:
    (Proc("head", "-c", size, "/dev/zero") | Proc("cat") | Proc("cat")).pipe_size(1 << 20).stdout_null().run()


def run_bash(size: int) -> None:
    subprocess.run(["bash", "-c", f"head -c {size} /dev/zero | cat | cat > /dev/null"], check=True)


def run_popen(size: int) -> None:
    head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert head.stdout is not None
    cat1 = subprocess.Popen(["cat"], stdin=head.stdout, stdout=subprocess.PIPE)
    head.stdout.close()  # the parent's copy: without this, head never sees SIGPIPE
    assert cat1.stdout is not None
    cat2 = subprocess.Popen(["cat"], stdin=cat1.stdout, stdout=subprocess.DEVNULL)
    cat1.stdout.close()
    codes = [p.wait() for p in (head, cat1, cat2)]
    if any(codes):
        raise RuntimeError(f"popen chain failed: {codes}")


CASES: dict[str, Case] = {
    "procflow": run_procflow,
    "procflow-1MiB": run_procflow_big_pipes,
    "bash": run_bash,
    "popen": run_popen,
}


def cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def measure(case: Case, size: int) -> dict[str, float]:
    c_self, c_children = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    case(size)
    wall = time.perf_counter() - t
    return {
        "seconds": wall,
        "gbps": size / wall / 1e9,
        "parent_cpu": cpu(resource.RUSAGE_SELF) - c_self,
        "children_cpu": cpu(resource.RUSAGE_CHILDREN) - c_children,
    }


def machine() -> dict[str, object]:
    try:
        pipe_max = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        pipe_max = None
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "pipe_max_size": pipe_max,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1 << 30, help="bytes through the pipeline (default 1 GiB)")
    parser.add_argument("--reps", type=int, default=7, help="rounds, each running every case once (default 7)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names or args.reps < 1 or args.size < 1:
        parser.error(f"bad --cases/--reps/--size (unknown cases: {unknown})")

    info = machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"head -c {args.size} /dev/zero | cat | cat > /dev/null, {args.reps} rounds, "
          f"{info['cpus']} CPUs, load {load}")
    for name in names:  # warm-up: page cache, imports, first-fork costs
        measure(CASES[name], min(args.size, 64 << 20))
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    orders = []
    for rep in range(args.reps):
        k = rep % len(names)
        order = names[k:] + names[:k]
        orders.append(order)
        for name in order:
            samples[name].append(measure(CASES[name], args.size))
        print(f"  round {rep + 1}: " + "  ".join(f"{n} {samples[n][-1]['gbps']:.2f}" for n in order), flush=True)

    summary = {}
    bash_median = statistics.median(s["gbps"] for s in samples["bash"]) if "bash" in samples else None
    for name in names:
        rates = [s["gbps"] for s in samples[name]]
        med = statistics.median(rates)
        summary[name] = {
            "median_gbps": med,
            "min_gbps": min(rates),
            "max_gbps": max(rates),
            "ratio_to_bash": med / bash_median if bash_median else None,
            "parent_cpu_median": statistics.median(s["parent_cpu"] for s in samples[name]),
            "children_cpu_median": statistics.median(s["children_cpu"] for s in samples[name]),
        }
    if "procflow" in samples and "procflow-1MiB" in samples:
        # Paired by round: the two cases ran within the same round, so share its noise.
        pairs = [b["gbps"] / a["gbps"] for a, b in zip(samples["procflow"], samples["procflow-1MiB"], strict=True)]
        summary["pipe_size_gain"] = {
            "median_ratio": statistics.median(pairs),
            "rounds_faster": sum(p > 1 for p in pairs),
            "rounds": len(pairs),
        }

    print()
    print(f"{'case':<15} {'median GB/s':>11} {'min-max':>13} {'x bash':>7} {'parent CPU':>11} {'children CPU':>13}")
    for name in names:
        s = summary[name]
        ratio = f"{s['ratio_to_bash']:.2f}" if s["ratio_to_bash"] is not None else "-"
        print(f"{name:<15} {s['median_gbps']:>11.2f} {s['min_gbps']:>6.2f}-{s['max_gbps']:<6.2f} {ratio:>7} "
              f"{s['parent_cpu_median'] * 1e3:>8.1f} ms {s['children_cpu_median']:>11.2f} s")
    if "pipe_size_gain" in summary:
        g = summary["pipe_size_gain"]
        print(f"\n.pipe_size(1 MiB) vs default, paired by round: median x{g['median_ratio']:.2f}, "
              f"faster in {g['rounds_faster']} of {g['rounds']} rounds")
    print(f"load after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if args.json:
        info["loadavg_after"] = os.getloadavg()
        doc = {
            "benchmark": "pipeline",
            "command": f"head -c {args.size} /dev/zero | cat | cat > /dev/null",
            "argv": [sys.executable, *sys.argv] if argv is None else argv,
            "size": args.size,
            "reps": args.reps,
            "machine": info,
            "orders": orders,
            "samples": samples,
            "summary": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {shlex.quote(str(args.json))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
