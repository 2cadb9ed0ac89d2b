"""run_all: many commands at once, at most `jobs` at a time, results in input order."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import child
from structlog.testing import capture_logs

from procflow import Cancelled, ExitError, Proc, ProcTimeout, Result, run_all

#: A shell child that says ready, then waits until the file named by $0 exists.
WAIT_FOR_FILE = 'echo ready; while [ ! -e "$0" ]; do sleep 0.01; done; echo "$1"'


def held(release: Path, label: str, on_ready: Callable[[str], object]) -> Proc:
    """A command that prints ready, holds until ``release`` exists, then prints ``label``."""
    return Proc("sh", "-c", WAIT_FOR_FILE, str(release), label).stdout_capture().on_stdout(on_ready)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; the list gets its return value or its exception."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=target, name="test-run_all")
    t.start()
    return t, out


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class TestResults:
    def test_input_order_not_completion_order(self, tmp_path: Path) -> None:
        """Results come in input order even when the first command finishes last."""
        go = tmp_path / "go"
        first = held(go, "first", lambda _l: None)
        second = Proc("sh", "-c", 'echo second; touch "$0"', str(go)).stdout_capture()
        results = run_all([first, second], jobs=2)
        assert [r.stdout for r in results] == [b"ready\nfirst\n", b"second\n"]
        assert all(isinstance(r, Result) and r.ok for r in results)

    def test_many(self) -> None:
        """Many short commands with few jobs: every result, in order."""
        results = run_all([Proc("echo", str(i)).stdout_capture() for i in range(12)], jobs=3)
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(12)]

    def test_empty(self) -> None:
        """No commands: an empty list."""
        assert run_all([]) == []

    def test_accepts_any_iterable(self) -> None:
        """A generator of commands is fine."""
        results = run_all((Proc("echo", str(i)).stdout_capture() for i in range(3)), jobs=2)
        assert [r.stdout for r in results] == [b"0\n", b"1\n", b"2\n"]

    def test_pipelines(self) -> None:
        """Pipelines run inside run_all like single commands, with their stages in the result."""
        cmds = [
            Proc("printf", "b\\na\\n") | Proc("sort"),
            (Proc("echo", "x") | Proc("tr", "x", "y") | Proc("cat")).text(),
            Proc("echo", "single"),
        ]
        results = run_all([c.stdout_capture() for c in cmds], jobs=2)
        assert results[0].stdout == b"a\nb\n" and len(results[0].stages) == 2
        assert results[1].stdout == "y\n" and len(results[1].stages) == 3
        assert results[2].stdout == b"single\n" and results[2].stages == (results[2],)

    def test_unchecked_failure_is_a_result(self) -> None:
        """An unchecked command's non-zero exit is returned, not raised."""
        results = run_all([child("exit", 5).unchecked(), child("exit", 0)], jobs=2)
        assert [r.returncode for r in results] == [5, 0]


class TestConcurrency:
    def test_at_most_jobs_at_once(self, tmp_path: Path) -> None:
        """Never more than `jobs` children alive at once, and `jobs` are used."""
        jobs, n = 2, 6
        ready: queue.Queue[int] = queue.Queue()
        live_at_ready: list[int] = []

        def live() -> int:
            """Our children that are alive (not zombies) and belong to this test."""
            count = 0
            for p in psutil.Process().children():
                try:
                    if p.status() != psutil.STATUS_ZOMBIE and str(tmp_path) in " ".join(p.cmdline()):
                        count += 1
                except psutil.NoSuchProcess:
                    pass
            return count

        def on_ready(i: int) -> Callable[[str], None]:
            def cb(line: str) -> None:
                if line == "ready":
                    live_at_ready.append(live())
                    ready.put(i)

            return cb

        cmds = [held(tmp_path / f"go{i}", str(i), on_ready(i)) for i in range(n)]
        t, out = in_thread(lambda: run_all(cmds, jobs=jobs))
        try:
            waiting: set[int] = set()
            released = 0
            fresh = False
            while released < n:
                if len(waiting) < min(jobs, n - released):
                    waiting.add(ready.get(timeout=10))
                    fresh = True
                    continue
                if fresh:
                    # A new child started, so the one released before it has ended (run_all reaps
                    # before it starts the next): every slot is busy with a child that waits for us.
                    assert live() == len(waiting)
                fresh = False
                j = min(waiting)
                waiting.remove(j)
                (tmp_path / f"go{j}").touch()
                released += 1
        finally:
            for i in range(n):
                (tmp_path / f"go{i}").touch()
            t.join(30)
        results = out[0]
        assert [r.stdout for r in results] == [f"ready\n{i}\n".encode() for i in range(n)]
        assert max(live_at_ready) == jobs

    def test_jobs_one_is_sequential(self, tmp_path: Path) -> None:
        """jobs=1: each command starts after the previous one ended (it sees the previous one's file)."""
        log = tmp_path / "log"
        cmds = [
            Proc("sh", "-c", 'test "$(wc -l < "$0" 2>/dev/null || echo 0)" -eq "$1" && echo "$1" >> "$0"', str(log), i)
            for i in range(4)
        ]
        run_all(cmds, jobs=1)
        assert log.read_text().split() == ["0", "1", "2", "3"]


class TestFailFast:
    def test_first_failure_stops_the_rest(self, tmp_path: Path) -> None:
        """With fail_fast the first failure is raised; the others are stopped and reaped, nothing left."""
        ready = threading.Semaphore(0)
        sleepers = [child("sleep_forever").on_stdout(lambda _l: ready.release()) for _ in range(3)]
        gate = tmp_path / "gate"  # the failing command fails only once the sleepers are up
        script = 'while [ ! -e "$0" ]; do sleep 0.01; done; echo "err line 1" >&2; exit 7'
        failing = Proc("sh", "-c", script, str(gate)).stderr_capture()
        with capture_logs() as logs:
            t, out = in_thread(lambda: run_all([*sleepers, failing], jobs=4, fail_fast=True))
            try:
                for _ in range(3):
                    assert ready.acquire(timeout=10)
            finally:
                gate.touch()
                t.join(30)
        assert not t.is_alive()
        err = out[0]
        assert isinstance(err, ExitError)
        assert err.result.returncode == 7
        assert "err line 1" in str(err)
        spawned = [e["pid"] for e in logs if e["event"] == "proc.spawn"]
        exited = {e["pid"]: e["returncode"] for e in logs if e["event"] == "proc.exit"}
        assert len(spawned) == 4
        assert set(spawned) == set(exited)  # every child reaped by procflow
        assert sorted(exited.values()) == [-signal.SIGTERM] * 3 + [7]
        for pid in spawned:
            assert dead(pid)

    def test_rest_never_starts(self) -> None:
        """Commands not started yet when the first failure happens are never started."""
        with capture_logs() as logs, pytest.raises(ExitError) as info:
            run_all([child("exit", 3), child("sleep_forever"), child("echo", "a"), child("echo", "b")], jobs=2)
        assert info.value.result.returncode == 3
        spawned = [e["argv"][-1] for e in logs if e["event"] == "proc.spawn"]
        assert "a" not in spawned and "b" not in spawned
        assert len(spawned) <= 2

    def test_timeout_counts_as_failure(self) -> None:
        """A ProcTimeout is a failure like any other: raised, the rest stopped."""
        with pytest.raises(ProcTimeout):
            run_all([child("sleep_forever").timeout(0.3), child("sleep_forever")], jobs=2)

    def test_not_reported_as_cancelled(self) -> None:
        """The error raised is the real failure, never the Cancelled of a command it stopped."""
        for _ in range(3):
            with pytest.raises(ExitError):
                run_all([child("sleep_forever"), child("sleep_forever"), child("exit", 1)], jobs=3)


class TestWithoutFailFast:
    def test_all_run_and_errors_are_grouped(self, tmp_path: Path) -> None:
        """Without fail_fast every command runs; the failures come together in an ExceptionGroup."""
        marks = [tmp_path / f"ran{i}" for i in range(5)]
        cmds = [
            Proc("sh", "-c", 'touch "$0"; exit "$1"', str(marks[i]), code)
            for i, code in enumerate([0, 3, 0, 4, 0])
        ]
        with pytest.raises(ExceptionGroup) as info:
            run_all(cmds, jobs=2, fail_fast=False)
        group = info.value
        assert all(m.exists() for m in marks)  # every one ran, also those after a failure
        assert len(group.exceptions) == 2
        assert all(isinstance(e, ExitError) for e in group.exceptions)
        assert [e.result.returncode for e in group.exceptions] == [3, 4]  # type: ignore[attr-defined]
        assert "2 of 5" in str(group)

    def test_no_failure_returns_results(self) -> None:
        """Without fail_fast and no failure, the results are returned."""
        results = run_all([Proc("true"), Proc("echo", "x").stdout_capture()], fail_fast=False)
        assert results[1].stdout == b"x\n"

    def test_each_error_keeps_its_result(self) -> None:
        """Each grouped error carries the result of its own command (its output included)."""
        cmds = [child("stderr_lines", 1, 2).stderr_capture(), child("sleep_forever").stdout_capture().timeout(0.2)]
        with pytest.raises(ExceptionGroup) as info:
            run_all(cmds, jobs=2, fail_fast=False)
        exit_err, timeout_err = info.value.exceptions
        assert isinstance(exit_err, ExitError) and exit_err.result.stderr == b"err line 0\n"
        assert isinstance(timeout_err, ProcTimeout) and timeout_err.result.stdout == b"ready\n"


class TestArguments:
    @pytest.mark.parametrize("jobs", [0, -1])
    def test_jobs_positive(self, jobs: int) -> None:
        """jobs must be at least 1."""
        with pytest.raises(ValueError):
            run_all([Proc("true")], jobs=jobs)

    @pytest.mark.parametrize("jobs", ["2", 2.0, True])
    def test_jobs_int(self, jobs: object) -> None:
        """jobs must be an int."""
        with pytest.raises(TypeError):
            run_all([Proc("true")], jobs=jobs)  # type: ignore[arg-type]

    def test_items_must_be_commands(self) -> None:
        """Only Procs and Pipelines; checked before anything starts."""
        with capture_logs() as logs, pytest.raises(TypeError):
            run_all([Proc("true"), ["echo", "x"]])  # type: ignore[list-item]
        assert not logs

    def test_cancel_before(self) -> None:
        """A cancelled token: Cancelled, nothing run."""
        from procflow import Cancel

        token = Cancel()
        token.cancel()
        with capture_logs() as logs, pytest.raises(Cancelled):
            run_all([Proc("true")], cancel=token)
        assert not [e for e in logs if e["event"] == "proc.spawn"]
