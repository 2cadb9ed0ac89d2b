"""The benchmark suite (benchmarks/run.py) runs end to end and reports every case."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402 - benchmarks/ is not a package
import run  # noqa: E402


def _installed(impl: cases.Impl) -> bool:
    return impl.needs is None or importlib.util.find_spec(impl.needs) is not None


class TestQuickRun:
    def test_reports_every_case_and_implementation(self, tmp_path: Path) -> None:
        """A --quick run exits 0 and has a timing for every case and every installed implementation."""
        out = tmp_path / "bench.json"
        proc = subprocess.run(
            [sys.executable, str(BENCH / "run.py"), "--quick", "--no-extra", "--json", str(out)],
            capture_output=True, text=True, timeout=100,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = json.loads(out.read_text())
        assert [c["name"] for c in report["cases"]] == [c.name for c in cases.CASES]
        for case, res in zip(cases.CASES, report["cases"], strict=True):
            assert case.title in proc.stdout
            rows = {r["name"]: r for r in res["impls"]}
            assert list(rows) == [i.name for i in case.impls]
            for impl in case.impls:
                row = rows[impl.name]
                if not _installed(impl):
                    assert "skipped" in row
                    continue
                assert "error" not in row, f"{case.name}/{impl.name}: {row.get('error')}"
                assert row["median_seconds"] > 0
                assert len(row["runs"]) == 1
            assert rows[case.reference]["speed_vs_ref"] == 1.0
            for target in res["targets"]:
                assert target["pass"] in (True, False), f"{case.name}: {target['description']} not evaluated"


class TestOptions:
    def test_order_alternates_between_repetitions(self) -> None:
        """Each repetition runs every implementation once, and consecutive ones reverse the order."""
        impls = cases.CASES[0].impls
        orders = [run.order_for(rep, impls) for rep in range(4)]
        for order in orders:
            assert sorted(i.name for i in order) == sorted(i.name for i in impls)
        assert orders[1] == orders[0][::-1]
        assert orders[2][0] != orders[0][0]

    def test_only_selects_by_name_and_number(self) -> None:
        """--only takes case names, numbers, and a bare 4 for both spawn cases."""
        assert [c.name for c in run.select_cases(["lines", "1"])] == ["pipeline", "lines"]
        assert [c.name for c in run.select_cases(["4"])] == ["spawn-true", "spawn-echo"]
        assert [c.name for c in run.select_cases(["4b,concurrent"])] == ["spawn-echo", "concurrent"]

    def test_targets_are_judged_from_medians(self) -> None:
        """A speed target compares medians: 1.0 s against a 0.95 s reference passes 0.9x and fails 1x."""
        case = cases.BY_NAME["pipeline"]
        rows = {"procflow": {"median_seconds": 1.0, "cpu": 0.2}, "bash": {"median_seconds": 0.95}}
        speed = run.evaluate(cases.Target("procflow", "speed", 0.9, "bash"), rows, case)
        assert speed["pass"] is True and abs(speed["measured"] - 0.95) < 1e-9
        assert run.evaluate(cases.Target("procflow", "speed", 1.0, "bash"), rows, case)["pass"] is False
        assert run.evaluate(cases.Target("procflow", "cpu", 0.05), rows, case)["pass"] is False
        wall = run.evaluate(cases.Target("procflow", "wall", 1.15, "bash"), rows, case)
        assert wall["pass"] is True and abs(wall["measured"] - 1 / 0.95) < 1e-9
