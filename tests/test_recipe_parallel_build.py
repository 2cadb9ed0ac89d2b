"""recipes/parallel_build.py, run for real: cc on sample programs through run_all, fail-fast, summary table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from structlog.testing import capture_logs

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "parallel_build.py"


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    """The recipe, imported from its file."""
    spec = importlib.util.spec_from_file_location("recipe_parallel_build", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by target."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["target", "status"])
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if not cells or cells[0] not in ROW_TARGETS:
            break
        rows[cells[0]] = cells
    return rows


ROW_TARGETS = {"hello", "fib", "primes", "sort", "collatz", "warn", "broken", "one", "two"}


class TestSuccess:
    def test_builds_and_programs_run(
        self, recipe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every sample compiles; each program exists, runs and prints its line; the table has each target."""
        out = tmp_path / "bin"
        assert recipe.main(["--out", str(out)]) == 0
        captured = capsys.readouterr()
        for name, (_source, expected) in recipe.SAMPLES.items():
            program = out / Path(name).stem
            assert program.is_file()
            run = subprocess.run([program], capture_output=True, text=True, timeout=30, check=True)
            assert run.stdout.strip() == expected
        rows = table(captured.out)
        assert set(rows) == {Path(n).stem for n in recipe.SAMPLES}
        for cells in rows.values():
            status, seconds, cpu, rss, unit = cells[1:6]
            assert status == "ok"
            assert float(seconds) >= 0 and float(cpu) >= 0 and float(rss) > 0 and unit == "MiB"
        assert "6 of 6 compiled with" in captured.out

    def test_compiler_lines_prefixed_with_their_target(
        self, recipe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The warning of warn.c is shown live, each of its lines prefixed with [warn]."""
        assert recipe.main(["--out", str(tmp_path / "bin"), "--jobs", "3"]) == 0
        err = capsys.readouterr().err
        warn_lines = [line for line in err.splitlines() if "unused variable" in line]
        assert warn_lines and all(line.startswith("[warn] ") for line in warn_lines)
        # Every line the compilers wrote carries a target prefix: nothing interleaved mid-line.
        assert all(line.startswith("[warn] ") for line in err.splitlines() if line)

    def test_given_directory(self, recipe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Given a directory, its *.c files are compiled into DIR/build."""
        src = tmp_path / "src"
        src.mkdir()
        (src / "one.c").write_text('#include <stdio.h>\nint main(void){puts("1");return 0;}\n')
        (src / "two.c").write_text('#include <stdio.h>\nint main(void){puts("2");return 0;}\n')
        assert recipe.main([str(src), "--jobs", "1"]) == 0
        for name, text in [("one", "1"), ("two", "2")]:
            run = subprocess.run([src / "build" / name], capture_output=True, text=True, timeout=30, check=True)
            assert run.stdout.strip() == text
        assert set(table(capsys.readouterr().out)) == {"one", "two"}


class TestBroken:
    def test_broken_file_stops_the_build(
        self, recipe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--broken: non-zero exit, the compiler's error shown (prefixed and in the failure), no child left."""
        with capture_logs() as logs:
            status = recipe.main(["--broken", "--jobs", "2", "--out", str(tmp_path / "bin")])
        captured = capsys.readouterr()
        assert status == 1
        assert "[broken] " in captured.err and "error: expected" in captured.err
        assert "build failed: command cc" in captured.err
        failure = captured.err[captured.err.index("build failed:") :]
        assert "exited with status 1" in failure and "error: expected" in failure  # the stderr tail
        rows = table(captured.out)
        assert rows["broken"][1] == "FAILED"
        # Fail-fast: with 2 jobs at most one other compiler was running; the rest never started.
        spawned = [e for e in logs if e["event"] == "proc.spawn"]
        assert len(spawned) < len(rows)
        assert {e["pid"] for e in spawned} == {e["pid"] for e in logs if e["event"] == "proc.exit"}
        assert [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE] == []
        stopped = [t for t, cells in rows.items() if cells[1] == "stopped"]
        assert stopped and not (tmp_path / "bin" / "broken").exists()

    def test_as_a_script(self, tmp_path: Path) -> None:
        """Run as a program: exit 1 with --broken, the error on stderr, the table on stdout."""
        proc = subprocess.run(
            [sys.executable, str(RECIPE), "--broken", "--jobs", "2", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert "error: expected" in proc.stderr
        assert "FAILED" in proc.stdout and "target" in proc.stdout

    def test_bad_usage(self, recipe: ModuleType, tmp_path: Path) -> None:
        """A directory without C files or a bad --jobs is a usage error (exit 2)."""
        with pytest.raises(SystemExit) as info:
            recipe.main([str(tmp_path)])
        assert info.value.code == 2
        with pytest.raises(SystemExit) as info:
            recipe.main(["--jobs", "0"])
        assert info.value.code == 2

    def test_missing_compiler(self, recipe: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A compiler that cannot be found fails the build with a clear message."""
        assert recipe.main(["--cc", "no-such-cc-procflow", "--out", str(tmp_path)]) == 1
        assert "command not found: 'no-such-cc-procflow'" in capsys.readouterr().err
