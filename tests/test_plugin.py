"""The pytest plugin: the proc_supervisor fixture and the --procflow-leaks option, run on inner test files."""

from __future__ import annotations

from importlib.metadata import entry_points

import psutil
import pytest

pytest_plugins = ["pytester"]

CLEAN = """
from procflow import Proc

def test_clean(proc_supervisor):
    assert Proc("echo", "hi").stdout_capture().run().stdout == b"hi\\n"
    assert proc_supervisor.children() == []
"""

#: Three tests judged by the fixture: one clean, one leaking a child (its pid written down), one an fd.
WITH_FIXTURE = CLEAN + """
import os, sys
from procflow import os_pipe

def test_leaks_child(proc_supervisor):
    running = Proc(sys.executable, "-c", "import time; time.sleep(60)").start()
    assert [c.pid for c in proc_supervisor.children()] == [running.pid]
    with open("child.pid", "w") as f:
        f.write(str(running.pid))
    # never waited

def test_leaks_fd(proc_supervisor):
    r, w = os_pipe()
    w.write(b"x")
"""

NO_FIXTURE_LEAK = """
import sys
from procflow import Proc

KEEP = []

def test_starts_and_forgets():
    KEEP.append(Proc(sys.executable, "-c", "import time; time.sleep(60)").start())

def test_clean():
    Proc("true").run()
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Run ``source`` as a test file in a fresh pytest process (leaks cannot touch this one)."""
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=60)


def test_entry_point_registered() -> None:
    """The plugin is installed as a pytest11 entry point named procflow."""
    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("procflow") == "procflow._pytest_plugin"


def test_option_listed(pytester: pytest.Pytester) -> None:
    """--procflow-leaks appears in pytest --help."""
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--procflow-leaks*"])


class TestFixture:
    def test_clean_passes_leaks_fail_and_are_stopped(self, pytester: pytest.Pytester) -> None:
        """With the fixture: a clean test passes; leaking a child or an fd FAILS (no teardown error), named."""
        outcome = run(pytester, WITH_FIXTURE)
        outcome.assert_outcomes(passed=1, failed=2, errors=0)
        outcome.stdout.no_fnmatch_line("*ERROR at teardown*")
        outcome.stdout.fnmatch_lines(
            ["*test_leaks_child*", "*procflow leak check*child pid=*", "*test_leaks_fd*", "*procflow leak check*fd *"]
        )
        # The fixture stopped the leaked child: it did not outlive its test.
        pid = int((pytester.path / "child.pid").read_text())
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        assert not alive


class TestOption:
    def test_inert_without_option(self, pytester: pytest.Pytester) -> None:
        """Without --procflow-leaks a test that forgets a child is not failed by the plugin."""
        result = run(pytester, NO_FIXTURE_LEAK)
        result.assert_outcomes(passed=2)

    def test_option_checks_every_test(self, pytester: pytest.Pytester) -> None:
        """With --procflow-leaks the forgetful test fails (not an error); the clean one still passes."""
        result = run(pytester, NO_FIXTURE_LEAK, "--procflow-leaks")
        result.assert_outcomes(passed=1, failed=1, errors=0)
        result.stdout.fnmatch_lines(["*test_starts_and_forgets*", "*procflow leak check*children*"])

    def test_in_process_inert(self, pytester: pytest.Pytester) -> None:
        """Run in this very process without the option, the plugin changes nothing for a plain test."""
        pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
        result = pytester.runpytest("-p", "no:cacheprovider", "-q")
        result.assert_outcomes(passed=1)
