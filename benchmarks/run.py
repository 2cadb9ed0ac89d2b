#!/usr/bin/env python3
"""procflow side by side with bash, hand-written subprocess code and its peers (sh, plumbum, sarge, duct, shellous).

    python3 tasks.py bench                       # the full suite (sets up .venv with the `bench` extra)
    .venv/bin/python benchmarks/run.py --quick   # tiny sizes, one repetition: checks that everything runs
    .venv/bin/python benchmarks/run.py --only lines --only 4 --reps 7 --json out.json
    .venv/bin/python benchmarks/run.py --readme --note "..."   # also write the tables into benchmarks/README.md

Every measurement runs in a fresh worker process (see cases.py); the implementations of a
case take turns in an order that alternates between repetitions; each figure is the median of
the repetitions and is compared with the case's reference as a ratio, because absolute times
on a shared machine mean little. The other ``benchmarks/bench_*.py`` scripts, when present, run
afterwards as subprocesses and their ``--json`` output is collected.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from cases import CASES, Case, Impl, MiB, Target  # noqa: E402 - after the path is set

README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


# ------------------------------------------------------------------------------------------------
# running


def available(impl: Impl) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    if impl.needs and importlib.util.find_spec(impl.needs) is None:
        return f"{impl.needs} not installed (pip install -e '.[bench]')"
    if impl.name == "bash" and shutil.which("bash") is None:
        return "bash not found"
    return None


def run_worker(case: Case, impl: Impl, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="procflow-bench-") as out:
        cmd = [sys.executable, str(HERE / "cases.py"), "--worker", case.name, impl.name, json.dumps(params), out.name]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:g} s"}
        text = out.read()
    if not text:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {"error": f"worker exited {proc.returncode}: {' / '.join(tail)}"}
    record: dict[str, Any] = json.loads(text)
    return record


def order_for(rep: int, impls: list[Impl]) -> list[Impl]:
    """Alternate the order between repetitions: rotate every two, reverse every other."""
    k = (rep // 2) % len(impls)
    order = impls[k:] + impls[:k]
    return order[::-1] if rep % 2 else order


def run_case(case: Case, args: argparse.Namespace, tmpdir: str) -> dict[str, Any]:
    params = dict(case.quick if args.quick else case.full)
    if case.setup is not None:
        params.update(case.setup(params, tmpdir))
    impls = [i for i in case.impls if not args.impl or i.name in args.impl or i.name == case.reference]
    skipped = {i.name: why for i in impls if (why := available(i))}
    runnable = [i for i in impls if i.name not in skipped]
    runs: dict[str, list[dict[str, Any]]] = {i.name: [] for i in runnable}
    reps = args.reps
    load_before = os.getloadavg()
    started = time.monotonic()
    for rep in range(reps):
        for impl in order_for(rep, runnable):
            record = run_worker(case, impl, params, args.timeout)
            runs[impl.name].append(record)
            if args.verbose:
                shown = record.get("error") or f"{record['seconds']:.3f} s"
                print(f"  [{case.name} rep {rep + 1}/{reps}] {impl.name}: {shown}", file=sys.stderr, flush=True)
    volume = case.volume(params)
    rows = []
    for impl in impls:
        row: dict[str, Any] = {"name": impl.name, "label": impl.label}
        if impl.name in skipped:
            row["skipped"] = skipped[impl.name]
            rows.append(row)
            continue
        recs = runs[impl.name]
        row["runs"] = recs
        errors = [r["error"] for r in recs if "error" in r]
        if errors:
            row["error"] = errors[0]
            rows.append(row)
            continue
        secs = [r["seconds"] for r in recs]
        row["median_seconds"] = statistics.median(secs)
        row["min_seconds"] = min(secs)
        row["max_seconds"] = max(secs)
        row["cpu"] = statistics.median(r["cpu"] for r in recs)
        row["rss_growth"] = statistics.median(r["rss_growth"] for r in recs)
        peaks = [r["threads_peak"] for r in recs if r.get("threads_peak") is not None]
        row["threads_peak"] = max(peaks) if peaks else None
        row["throughput"] = volume / row["median_seconds"] if volume else None
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    ref = by_name.get(case.reference, {})
    for row in rows:
        if "median_seconds" in row and "median_seconds" in ref:
            row["speed_vs_ref"] = ref["median_seconds"] / row["median_seconds"]
    targets = [evaluate(t, by_name, case) for t in case.targets]
    return {
        "name": case.name,
        "number": case.number,
        "title": case.title,
        "note": case.note,
        "params": {k: v for k, v in params.items() if not k.startswith("_") and "path" not in k},
        "reference": case.reference,
        "reps": reps,
        "elapsed": time.monotonic() - started,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "impls": rows,
        "targets": targets,
    }


def evaluate(t: Target, rows: dict[str, dict[str, Any]], case: Case) -> dict[str, Any]:
    row = rows.get(t.impl, {})
    other = rows.get(t.vs or "", {})
    out: dict[str, Any] = {"impl": t.impl, "kind": t.kind, "vs": t.vs, "goal": t.value,
                           "description": t.describe(case.labels), "measured": None, "pass": None}
    if "median_seconds" not in row:
        return out
    if t.kind in ("speed", "wall"):
        if "median_seconds" not in other:
            return out
        speed = other["median_seconds"] / row["median_seconds"]
        if t.kind == "speed":
            out["measured"], out["pass"] = speed, speed >= t.value
        else:
            out["measured"], out["pass"] = 1 / speed, 1 / speed <= t.value
    elif t.kind == "cpu":
        share = row["cpu"] / row["median_seconds"]
        out["measured"], out["pass"] = share, share <= t.value
    elif t.kind == "rss":
        out["measured"], out["pass"] = row["rss_growth"], row["rss_growth"] < t.value
    return out


# ------------------------------------------------------------------------------------------------
# other benchmark scripts


def extra_scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("bench_*.py") if p.is_file())


def script_options(script: Path) -> set[str]:
    """The long options a script's ``--help`` lists."""
    try:
        proc = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return set(re.findall(r"(--[a-z][\w-]*)", proc.stdout))


def run_extra(script: Path, args: argparse.Namespace) -> dict[str, Any]:
    opts = script_options(script)
    cmd = [sys.executable, str(script)]
    if args.quick:
        # Tiny sizes and one repetition, in whatever words the script understands.
        if "--quick" in opts:
            cmd.append("--quick")
        else:
            for opt in sorted(opts):
                if opt.endswith("size"):
                    cmd += [opt, str(1 << 20)]
            if "--reps" in opts:
                cmd += ["--reps", "1"]
    elif args.reps_given and "--reps" in opts:
        cmd += ["--reps", str(args.reps)]
    out_path = None
    if "--json" in opts:
        fd, out_path = tempfile.mkstemp(prefix="procflow-bench-", suffix=".json")
        os.close(fd)
        cmd += ["--json", out_path]
    print(f"\n## {script.name}\n\n$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}",
          flush=True)
    started = time.monotonic()
    entry: dict[str, Any] = {"script": script.name, "argv": cmd[1:]}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.extra_timeout)
        entry["returncode"] = proc.returncode
        entry["stdout"] = proc.stdout
        print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n")
        if proc.returncode:
            entry["stderr_tail"] = proc.stderr[-2000:]
            print(f"{script.name} exited {proc.returncode}:\n{proc.stderr[-2000:]}", file=sys.stderr)
        if out_path and os.path.getsize(out_path):
            with open(out_path) as f:
                entry["json"] = json.load(f)
    except subprocess.TimeoutExpired:
        entry["error"] = f"timed out after {args.extra_timeout:g} s"
        print(f"{script.name}: {entry['error']}", file=sys.stderr)
    except (OSError, ValueError) as e:
        entry["error"] = f"{type(e).__name__}: {e}"
    finally:
        if out_path:
            os.unlink(out_path)
    entry["elapsed"] = time.monotonic() - started
    return entry


# ------------------------------------------------------------------------------------------------
# reporting


def fmt_size(n: float) -> str:
    if n >= MiB:
        return f"{n / MiB:g} MiB"
    return f"{n / 1024:g} KiB"


def fmt_params(params: dict[str, Any]) -> str:
    parts = []
    for k, v in params.items():
        parts.append(f"{k}={fmt_size(v)}" if k == "size" else f"{k}={v}")
    return ", ".join(parts)


def verdicts_for(name: str, targets: list[dict[str, Any]]) -> tuple[str, str]:
    mine = [t for t in targets if t["impl"] == name]
    if not mine:
        return "", ""
    goals, results = [], []
    for t in mine:
        goals.append(t["description"])
        m = t["measured"]
        if m is None:
            results.append("n/a")
            continue
        shown = {"speed": f"{m:.2f}x", "wall": f"{m:.2f}x", "cpu": f"{m:.1%}", "rss": f"{m / MiB:.1f} MiB"}[t["kind"]]
        results.append(f"{'PASS' if t['pass'] else 'FAIL'} ({shown})")
    return "; ".join(goals), "; ".join(results)


def case_table(res: dict[str, Any]) -> str:
    show_rss = any(t["kind"] == "rss" for t in res["targets"])
    show_threads = any(r.get("threads_peak") is not None for r in res["impls"])
    show_tp = any(r.get("throughput") for r in res["impls"])
    head = ["implementation", "median s", "min-max s"]
    if show_tp:
        head.append("MB/s")
    head += ["speed vs ref", "parent CPU s"]
    if show_rss:
        head.append("peak RSS growth")
    if show_threads:
        head.append("threads peak")
    head += ["target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in res["impls"]:
        label = r["label"] + (" **(ref)**" if r["name"] == res["reference"] else "")
        if "median_seconds" not in r:
            why = r.get("skipped") or f"ERROR: {r.get('error')}"
            cells = [label, why.replace("|", "/")] + [""] * (len(head) - 2)
        else:
            cells = [label, f"{r['median_seconds']:.3f}", f"{r['min_seconds']:.3f}-{r['max_seconds']:.3f}"]
            if show_tp:
                cells.append(f"{r['throughput'] / 1e6:,.0f}" if r.get("throughput") else "")
            speed = r.get("speed_vs_ref")
            cells += [f"{speed:.2f}x" if speed else "n/a", f"{r['cpu']:.3f}"]
            if show_rss:
                cells.append(f"{r['rss_growth'] / MiB:.1f} MiB")
            if show_threads:
                cells.append(str(r["threads_peak"]))
            cells += list(verdicts_for(r["name"], res["targets"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def case_section(res: dict[str, Any]) -> str:
    title = f"### {res['number']}. {res['title']}"
    sub = (f"{fmt_params(res['params'])}; {res['reps']} repetition(s), median; "
           f"load average {res['load_before'][0]:.2f} -> {res['load_after'][0]:.2f}.")
    parts = [title, "", sub]
    if res["note"]:
        parts.append(res["note"])
    parts += ["", case_table(res)]
    return "\n".join(parts)


def summary_lines(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for res in results:
        for t in res["targets"]:
            if t["pass"] is not False and t["measured"] is not None:
                continue
            label = next((r["label"] for r in res["impls"] if r["name"] == t["impl"]), t["impl"])
            m = t["measured"]
            shown = "not measured" if m is None else verdicts_for(t["impl"], [t])[1]
            out.append(f"- {res['number']}. {res['name']}: {label} — {t['description']}: {shown}")
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "peers": {m: _version(m) for m in ("sh", "plumbum", "sarge", "duct", "shellous")},
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def markdown_report(report: dict[str, Any]) -> str:
    m = report["meta"]
    mach = m["machine"]
    peers = ", ".join(f"{k} {v}" for k, v in mach["peers"].items() if v)
    shown = [a for a in m["argv"] if a not in ("-v", "--verbose", "--readme")]
    for opt in ("--note", "--json"):
        if opt in shown and shown.index(opt) + 1 < len(shown):
            del shown[shown.index(opt): shown.index(opt) + 2]
    lines = [
        f"Run of {m['date']} (`{' '.join(['run.py', *shown])}`), {m['elapsed'] / 60:.1f} min: "
        f"{mach['cpus']} cores ({mach['cpu_model'] or 'unknown CPU'}), Linux {mach['kernel']}, "
        f"Python {mach['python']}; {peers}.",
    ]
    if m.get("note"):
        lines += ["", f"**Note:** {m['note']}"]
    failing = summary_lines(report["cases"])
    lines += ["", "Targets not met:" if failing else "Every target met.", *failing]
    for res in report["cases"]:
        lines += ["", case_section(res)]
    for extra in report["extra"]:
        lines += ["", f"### {extra['script']}", ""]
        if "error" in extra:
            lines.append(f"Did not finish: {extra['error']}.")
        else:
            lines += ["```", extra.get("stdout", "").strip(), "```"]
    return "\n".join(lines)


def write_readme(body: str) -> None:
    text = README.read_text() if README.exists() else ""
    if START in text and END in text:
        pre, rest = text.split(START, 1)
        _, post = rest.split(END, 1)
        README.write_text(f"{pre}{START}\n{body}\n{END}{post}")
    else:
        README.write_text(f"# Benchmarks\n\n{START}\n{body}\n{END}\n")
    print(f"\nwrote {README.relative_to(ROOT)}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------


def select_cases(only: list[str]) -> list[Case]:
    if not only:
        return list(CASES)
    wanted = {w.strip() for o in only for w in o.split(",") if w.strip()}
    picked = [c for c in CASES if c.name in wanted or c.number in wanted or re.sub(r"\D", "", c.number) in wanted]
    return picked


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one repetition (a smoke run)")
    ap.add_argument("--reps", type=int, help="repetitions per implementation (default 5; 1 with --quick)")
    ap.add_argument("--only", action="append", default=[], metavar="CASE",
                    help="run only this case (name or number: pipeline, feed-bytes, feed-gen, spawn-true,\n"
                         "spawn-echo, lines, concurrent, 1..6, 4a/4b; or bench_NAME for another script);\n"
                         "repeatable or comma-separated")
    ap.add_argument("--impl", action="append", default=[], metavar="NAME",
                    help="run only these implementations (and each case's reference); repeatable")
    ap.add_argument("--json", metavar="OUT", help="write every measurement and verdict to this JSON file")
    ap.add_argument("--readme", action="store_true", help="write the tables into benchmarks/README.md")
    ap.add_argument("--note", default="", help="a note for the README (e.g. what else ran on the machine)")
    ap.add_argument("--no-extra", action="store_true", help="do not run the other benchmarks/bench_*.py scripts")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per worker (default 600; 60 with --quick)")
    ap.add_argument("--extra-timeout", type=float, default=1800, help="seconds per bench_*.py script")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each measurement as it finishes")
    ap.add_argument("--render", metavar="JSON", help="measure nothing: print (and with --readme, write) the tables\n"
                                                     "of a report saved with --json")
    args = ap.parse_args(argv)
    args.reps_given = args.reps is not None
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 600.0
    args.impl = {w.strip() for o in args.impl for w in o.split(",") if w.strip()}
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        if args.note:
            saved["meta"]["note"] = args.note
        print(markdown_report(saved))
        if args.readme:
            write_readme(markdown_report(saved))
        return 0
    only_extra = {o for o in (w.strip() for x in args.only for w in x.split(",")) if o.startswith("bench_")}
    cases = select_cases(args.only)
    scripts = [] if args.no_extra else [
        s for s in extra_scripts() if not args.only or s.stem in only_extra or s.name in only_extra
    ]
    if not cases and not scripts:
        sys.exit(f"nothing matches --only {' '.join(args.only)}")
    started = time.monotonic()
    report: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "argv": argv,
            "quick": args.quick,
            "reps": args.reps,
            "machine": machine(),
            "note": args.note,
        },
        "cases": [],
        "extra": [],
    }
    print(f"# procflow benchmarks ({'quick' if args.quick else 'full'}, {args.reps} rep(s))", flush=True)
    with tempfile.TemporaryDirectory(prefix="procflow-bench-") as tmpdir:
        for case in cases:
            res = run_case(case, args, tmpdir)
            report["cases"].append(res)
            print("\n" + case_section(res), flush=True)
    for script in scripts:
        report["extra"].append(run_extra(script, args))
    report["meta"]["elapsed"] = time.monotonic() - started
    failing = summary_lines(report["cases"])
    if report["cases"]:
        print("\n" + ("Targets not met:\n" + "\n".join(failing) if failing else "Every target met."), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.readme:
        write_readme(markdown_report(report))
    errors = [(c["name"], r["name"]) for c in report["cases"] for r in c["impls"] if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
