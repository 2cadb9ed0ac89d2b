"""Soak: thousands of sequential runs leave no fd, thread or child behind.

The length comes from ``PROCFLOW_SOAK_RUNS`` (the default keeps the normal test
run short; CI runs it at the default, a release check with e.g. 20000).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from procflow import ExitError, Proc, ProcTimeout, SpawnError, Supervisor
from procflow._pumps import SERVICE_THREADS

RUNS = int(os.environ.get("PROCFLOW_SOAK_RUNS", "3000"))


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _procflow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("procflow-") and t.name not in SERVICE_THREADS]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _settle_threads(before: set[threading.Thread], timeout: float = 5.0) -> None:
    """Give pump threads that already signalled completion a bounded moment to end."""
    end = time.monotonic() + timeout
    for t in _procflow_threads():
        if t not in before:
            t.join(max(0.0, end - time.monotonic()))


def _scenarios(tmp: pathlib.Path, sup: Supervisor) -> list[Callable[[int], None]]:
    data = os.urandom(200_000)
    big = b"y" * (1 << 20)
    missing_dir = tmp / "missing"
    out_file = tmp / "out"

    def capture_input(i: int) -> None:
        assert Proc("cat").input(data).stdout_capture().run(supervisor=sup).stdout == data

    def failing_unchecked(i: int) -> None:
        r = Proc("sh", "-c", "echo err$0 >&2; exit 3", str(i)).stderr_capture().unchecked().run(supervisor=sup)
        assert r.returncode == 3
        assert r.stderr == f"err{i}\n".encode()

    def missing_program(i: int) -> None:
        with pytest.raises(SpawnError):
            Proc(f"procflow-soak-missing-{i}").input(data).stdout_capture().stderr_capture().run(supervisor=sup)

    def missing_cwd(i: int) -> None:
        with pytest.raises(SpawnError):
            Proc("true").cwd(missing_dir).stdout_capture().run(supervisor=sup)

    def timeout(i: int) -> None:
        with pytest.raises(ProcTimeout):
            Proc("sleep", "10").stdout_capture().stderr_capture().timeout(0.01).run(supervisor=sup)

    def start_wait(i: int) -> None:
        running = Proc("cat").input(data).stdout_capture().start(supervisor=sup)
        assert running.wait(timeout=30).stdout == data

    def read(i: int) -> None:
        assert Proc("echo", i).read(supervisor=sup) == str(i)

    def early_exit(i: int) -> None:
        # The child stops reading after 10 bytes: EPIPE on the feeder is not an error.
        r = Proc("head", "-c", "10").input(big).stdout_capture().run(supervisor=sup)
        assert r.stdout == b"y" * 10

    def to_path(i: int) -> None:
        Proc("echo", i).stdout_path(out_file).run(supervisor=sup)
        assert out_file.read_bytes() == f"{i}\n".encode()

    def checked_failure(i: int) -> None:
        with pytest.raises(ExitError):
            Proc("false").stderr_capture().run(supervisor=sup)

    def context_exception(i: int) -> None:
        with pytest.raises(KeyError), Proc("sleep", "10").stdout_capture().start(supervisor=sup):
            raise KeyError(i)

    return [
        capture_input,
        failing_unchecked,
        missing_program,
        missing_cwd,
        timeout,
        start_wait,
        read,
        early_exit,
        to_path,
        checked_failure,
        context_exception,
    ]


@pytest.mark.slow
def test_soak(tmp_path: pathlib.Path) -> None:
    """PROCFLOW_SOAK_RUNS runs of every kind (capture, input, spawn failures, timeouts) come back to baseline."""
    fds_before = _fds()
    threads_before = set(_procflow_threads())
    children_before = _children()
    with Supervisor() as sup:
        scenarios = _scenarios(tmp_path, sup)
        checkpoint_fds = None
        for i in range(RUNS):
            scenarios[i % len(scenarios)](i)
            if i % len(scenarios) == len(scenarios) - 1 and i >= 5 * len(scenarios):
                # Between full rounds the fd count must not grow (a leak shows long before the end).
                n = len(_fds())
                if checkpoint_fds is None:
                    checkpoint_fds = n
                assert n <= checkpoint_fds + 2, f"fd count grew from {checkpoint_fds} to {n} by run {i}"
        assert sup.children() == []
        report = sup.shutdown()
        assert not report, report.describe()
    _settle_threads(threads_before)
    assert _children() == children_before
    assert set(_procflow_threads()) == threads_before
    assert _fds() == fds_before
