"""The pytest plugin (entry point ``pytest11``): leak checks for tests that run children.

Inert unless asked: the ``proc_supervisor`` fixture gives a test its own
:class:`~procflow.Supervisor` and fails the test if a child, fd or thread
leaked; ``--procflow-leaks`` applies that check to every test.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from typing import Any

import pytest

from ._pumps import SERVICE_THREADS
from ._supervisor import Supervisor

__all__ = ["proc_supervisor", "snapshot", "leaks_since"]


def snapshot() -> dict[str, Any]:
    """The process's open fds, live ``procflow-*`` threads and children."""
    import psutil

    try:
        fds = set(os.listdir("/proc/self/fd"))
    except OSError:
        fds = set()
    threads = {t for t in threading.enumerate() if t.name.startswith("procflow-") and t.name not in SERVICE_THREADS}
    try:
        children = {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        children = set()
    return {"fds": fds, "threads": threads, "children": children}


def _fd_desc(fd: str) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return fd


def leaks_since(before: dict[str, Any], settle: float = 2.0) -> list[str]:
    """What is open or alive now that was not in ``before`` (waits ``settle`` s for threads)."""
    import psutil

    problems = []
    for t in threading.enumerate():
        if t.name.startswith("procflow-") and t.name not in SERVICE_THREADS and t not in before["threads"]:
            t.join(settle)
    after = snapshot()
    new_threads = sorted(t.name for t in after["threads"] - before["threads"])
    if new_threads:
        problems.append(f"threads: {new_threads}")
    new_children = after["children"] - before["children"]
    if new_children:
        desc = []
        for pid in sorted(new_children):
            try:
                p = psutil.Process(pid)
                desc.append(f"{pid} {p.cmdline()} ({p.status()})")
                p.kill()
            except psutil.Error:
                continue
        if desc:
            problems.append(f"children: {desc}")
    new_fds = sorted(after["fds"] - before["fds"], key=int)
    if new_fds:
        problems.append(f"fds: {[_fd_desc(fd) for fd in new_fds]}")
    return problems


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("procflow")
    group.addoption(
        "--procflow-leaks",
        action="store_true",
        default=False,
        help="fail every test that leaves a child process, an fd or a procflow thread behind",
    )


@pytest.fixture
def proc_supervisor() -> Generator[Supervisor, None, None]:
    """A Supervisor of the test's own; the test fails if anything leaked."""
    sup = Supervisor()
    with sup:
        yield sup


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    check_all = item.config.getoption("--procflow-leaks", default=False)
    sup = getattr(item, "funcargs", {}).get("proc_supervisor")
    before = snapshot() if check_all else None
    result = yield
    problems: list[str] = []
    if isinstance(sup, Supervisor):
        report = sup.shutdown()
        if report:
            problems.append(f"the test's supervisor found leaks: {report.describe()}")
    if before is not None:
        problems += leaks_since(before)
    if problems:
        pytest.fail("procflow leak check: " + "; ".join(problems), pytrace=False)
    return result
