"""Supervisor: tracking children, shutdown and its leak report, the watchdog, dropped handles."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import child
from structlog.testing import capture_logs

from procflow import ChildInfo, LeakReport, Proc, Secret, Supervisor, os_pipe, pipe

ROOT = str(Path(__file__).resolve().parent.parent)

#: A child that prints ready, then reads nothing until it gets SIGUSR1, then drains stdin.
READ_ON_SIGUSR1 = textwrap.dedent(
    """
    import os, signal, sys
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("ready", flush=True)
    signal.sigwait({signal.SIGUSR1})
    n = 0
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            break
        n += len(data)
    print(n, flush=True)
    """
)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Bounded wait until ``cond()`` is truthy; returns its value."""
    end = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        tick.wait(0.01)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class TestTracking:
    def test_children_inside_with(self) -> None:
        """Children started inside `with Supervisor()` are listed with pid, redacted argv, age, rss, cpu."""
        with Supervisor() as sup:
            running = child("sleep_forever", Secret("hunter2")).unchecked().start()
            assert running.pid
            infos = sup.children()
            assert len(infos) == 1
            info = infos[0]
            assert isinstance(info, ChildInfo)
            assert info.pid == running.pid
            assert info.argv[-2:] == ("sleep_forever", "***")
            assert "hunter2" not in repr(info)
            assert info.age >= 0
            assert info.rss is not None and info.rss > 0
            assert info.cpu is not None and info.cpu >= 0
            running.terminate()
            assert running.wait(timeout=10).returncode == -signal.SIGTERM
            assert sup.children() == []

    def test_age_grows(self) -> None:
        """ChildInfo.age is the time since spawn."""
        with Supervisor() as sup:
            running = child("sleep_forever").stdout_capture().start()
            t0 = time.monotonic()
            first = sup.children()[0].age
            wait_for(lambda: time.monotonic() - t0 > 0.05, what="time to pass")
            assert sup.children()[0].age > first
            running.kill()
        assert running.poll() is not None

    def test_children_outside_are_not_tracked(self) -> None:
        """A child started before the `with` belongs to another supervisor."""
        outer = Supervisor()
        running = child("sleep_forever").start(supervisor=outer)
        try:
            with Supervisor() as sup:
                assert sup.children() == []
                assert [c.pid for c in outer.children()] == [running.pid]
        finally:
            report = outer.shutdown(grace=1)
        assert [c.pid for c in report.children] == [running.pid]

    def test_explicit_supervisor(self) -> None:
        """start(supervisor=sup) puts the run under sup, outside any `with`."""
        sup = Supervisor()
        running = child("sleep_forever").start(supervisor=sup)
        assert [c.pid for c in sup.children()] == [running.pid]
        report = sup.shutdown()
        assert [c.pid for c in report.children] == [running.pid]
        assert running.poll() is not None and dead(running.pid)

    def test_explicit_supervisor_beats_the_with(self) -> None:
        """An explicit supervisor wins over the one of the current `with`."""
        other = Supervisor()
        with Supervisor() as sup:
            running = child("sleep_forever").start(supervisor=other)
            assert sup.children() == []
            assert [c.pid for c in other.children()] == [running.pid]
            other.shutdown()

    def test_nested_with(self) -> None:
        """The innermost `with` is the current supervisor; the outer one is current again after it."""
        with Supervisor() as outer:
            with Supervisor() as inner:
                a = child("sleep_forever").start()
                assert [c.pid for c in inner.children()] == [a.pid]
                assert outer.children() == []
            b = child("sleep_forever").start()
            assert [c.pid for c in outer.children()] == [b.pid]
        assert a.poll() is not None and b.poll() is not None

    def test_pipeline_stages_are_children(self) -> None:
        """Every stage of a pipeline is listed."""
        with Supervisor() as sup:
            running = (child("sleep_forever") | child("cat")).start()
            assert sorted(c.pid for c in sup.children()) == sorted(running.pids)

    def test_other_thread_uses_its_own_context(self) -> None:
        """A thread started inside the `with` does not inherit it (a context variable): the default tracks it."""
        seen: list[int] = []
        with Supervisor() as sup:

            def start_one() -> None:
                r = child("exit", 0).start()
                seen.append(len(sup.children()))
                r.wait(timeout=10)

            t = threading.Thread(target=start_one)
            t.start()
            t.join(10)
        assert seen == [0]


class TestShutdown:
    def test_shutdown_stops_live_trees_and_reports_them(self) -> None:
        """shutdown() stops every live tree (grandchildren too) and lists the children in the report."""
        sup = Supervisor()
        with capture_logs() as logs:
            running = Proc("sh", "-c", "sleep 60 & echo $!; wait").on_stdout(lambda _l: None).start(supervisor=sup)
            grand = wait_for(lambda: psutil.Process(running.pid).children(), what="the grandchild")[0].pid
            report = sup.shutdown(grace=1)
        assert isinstance(report, LeakReport)
        assert bool(report)
        assert [c.pid for c in report.children] == [running.pid]
        assert report.children[0].argv == ("sh", "-c", "sleep 60 & echo $!; wait")
        assert dead(running.pid) and wait_for(lambda: dead(grand), what="grandchild death")
        leaks = events(logs, "supervisor.leak")
        assert [(e["kind"], e["pid"]) for e in leaks] == [("child", running.pid)]
        assert running.poll() is not None and running.poll().returncode == -signal.SIGTERM  # type: ignore[union-attr]
        assert "child pid=" in report.describe()

    def test_shutdown_kills_after_grace(self) -> None:
        """shutdown(grace) SIGKILLs a child that ignores SIGTERM once the grace is over."""
        sup = Supervisor()
        ready = threading.Event()
        running = child("ignore_sigterm").on_stdout(lambda _l: ready.set()).start(supervisor=sup)
        assert ready.wait(10)
        t0 = time.monotonic()
        sup.shutdown(grace=0.3)
        assert 0.3 <= time.monotonic() - t0 < 0.3 + 1.5
        assert running.poll().returncode == -signal.SIGKILL  # type: ignore[union-attr]

    def test_exit_calls_shutdown(self) -> None:
        """Leaving the `with` stops what is still running, the handle then has its result."""
        with capture_logs() as logs, Supervisor():
            running = child("sleep_forever").stdout_capture().start()
        result = running.poll()
        assert result is not None and result.returncode == -signal.SIGTERM
        assert [e["pid"] for e in events(logs, "supervisor.leak")] == [running.pid]

    def test_exit_on_exception(self) -> None:
        """Leaving the `with` by an exception stops the children too and lets the exception go on."""
        with pytest.raises(RuntimeError, match="boom"), Supervisor():
            running = child("sleep_forever").start()
            raise RuntimeError("boom")
        assert running.poll() is not None and dead(running.pid)

    def test_os_pipe_ends_reported_then_closed(self) -> None:
        """os_pipe() ends still open at shutdown are reported as fds and closed."""
        with capture_logs() as logs:
            with Supervisor() as sup:
                r, w = os_pipe()
                r2, w2 = os_pipe()
                w2.close()  # closed by the caller: not a leak
                fds = (r.fileno(), w.fileno(), r2.fileno())
                report = sup.shutdown()
            assert sorted(report.fds) == sorted(fds)
            assert r.closed and w.closed and r2.closed
            assert sorted(e["fd"] for e in events(logs, "supervisor.leak") if e["kind"] == "fd") == sorted(fds)

    def test_clean_shutdown_reports_nothing(self) -> None:
        """A supervisor whose runs all ended reports nothing; its report is falsy."""
        with Supervisor() as sup:
            child("exit", 0).run()
            r, w = os_pipe()
            r.close()
            w.close()
            report = sup.shutdown()
        assert not report
        assert report == LeakReport()
        assert report.describe() == "nothing leaked"

    def test_shutdown_twice(self) -> None:
        """A second shutdown() finds nothing left."""
        sup = Supervisor()
        child("sleep_forever").start(supervisor=sup)
        assert sup.shutdown().children
        assert not sup.shutdown()

    def test_shutdown_reports_stuck_threads(self) -> None:
        """A pump thread that cannot be stopped (stuck in the caller's iterator) is reported."""
        release = threading.Event()
        inside = threading.Event()

        def stuck() -> Any:
            inside.set()
            release.wait(30)
            yield b""

        try:
            sup = Supervisor()
            child("cat").input(stuck()).start(supervisor=sup)
            assert inside.wait(10)
            with capture_logs() as logs:
                report = sup.shutdown(grace=0.2)
            assert [t for t in report.threads if t.startswith("procflow-feed[pid=")]
            assert [e for e in events(logs, "supervisor.leak") if e["kind"] == "thread"]
        finally:
            release.set()

    def test_default_supervisor_cleans_up_at_exit(self, tmp_path: Path) -> None:
        """A program that starts a child and never waits: the default supervisor stops it at exit and says so."""
        script = tmp_path / "forget.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import sys
                sys.path.insert(0, {ROOT!r})
                from procflow import Proc
                running = Proc("sh", "-c", "sleep 60 & echo $!; wait").stdout_capture().start()
                print(running.pid, flush=True)
                keep = running  # never waited
                """
            )
        )
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        pid = int(proc.stdout)
        assert wait_for(lambda: dead(pid), what="the forgotten child to die")
        assert "supervisor.leak" in proc.stderr and "kind='child'" in proc.stderr


class TestWatchdog:
    def test_blocked_feeder_logged_then_unblocked(self) -> None:
        """A feeder blocked longer than blocked_after logs pipe.writer_blocked, then pipe.writer_unblocked."""
        size = 4 << 20
        lines: list[str] = []
        with capture_logs() as logs, Supervisor(blocked_after=0.2):
            cmd = Proc(sys.executable, "-c", READ_ON_SIGUSR1).input(b"z" * size).on_stdout(lines.append)
            running = cmd.start()
            blocked = wait_for(lambda: events(logs, "pipe.writer_blocked"), what="pipe.writer_blocked")[0]
            assert lines[:1] == ["ready"]
            assert blocked["pid"] == running.pid
            assert blocked["argv"] == [sys.executable, "-c", READ_ON_SIGUSR1]
            assert blocked["blocked_for"] >= 0.2
            assert 0 < blocked["bytes_written"] < size
            assert blocked["log_level"] == "warning"
            assert not events(logs, "pipe.writer_unblocked")
            running.send_signal(signal.SIGUSR1)  # now the child reads: the feeder moves again
            unblocked = wait_for(lambda: events(logs, "pipe.writer_unblocked"), what="pipe.writer_unblocked")[0]
            assert unblocked["pid"] == running.pid
            assert unblocked["bytes_written"] >= blocked["bytes_written"]
            result = running.wait(timeout=30)
        assert result.ok
        assert lines == ["ready", str(size)]
        assert len(events(logs, "pipe.writer_blocked")) == 1  # once per episode

    def test_short_block_not_logged(self) -> None:
        """A feeder that is blocked only briefly (below blocked_after) is not reported."""
        with capture_logs() as logs, Supervisor(blocked_after=30):
            result = child("cat").input(b"q" * (1 << 20)).stdout_capture().run()
        assert len(result.stdout) == 1 << 20
        assert not events(logs, "pipe.writer_blocked")

    def test_blocked_pipe_writer(self) -> None:
        """A procflow.pipe() writer blocked on a full buffer is reported, and again when it moves."""
        with Supervisor(blocked_after=0.2):
            r, w = pipe(capacity=1024)  # takes blocked_after from the current supervisor
        done = threading.Event()

        def write() -> None:
            w.write(b"a" * 4096)
            w.close()
            done.set()

        t = threading.Thread(target=write, name="test-writer")
        with capture_logs() as logs:
            t.start()
            blocked = wait_for(lambda: events(logs, "pipe.writer_blocked"), what="pipe.writer_blocked")[0]
            assert blocked["blocked_for"] >= 0.2
            assert blocked["bytes_written"] == 1024
            assert not done.is_set()
            data = r.read()
            t.join(10)
            assert done.is_set()
            assert wait_for(lambda: events(logs, "pipe.writer_unblocked"), what="pipe.writer_unblocked")
        r.close()
        assert data == b"a" * 4096

    def test_one_watchdog_thread(self) -> None:
        """The watchdog is one long-lived thread named procflow-watchdog."""
        with capture_logs() as logs, Supervisor(blocked_after=0.1):
            for _ in range(2):
                running = child("sleep_forever").input(b"x" * (2 << 20)).start()
                n = len(events(logs, "pipe.writer_blocked"))
                wait_for(lambda n=n: len(events(logs, "pipe.writer_blocked")) > n, what="a blocked writer")
                running.kill()
        watchdogs = [t for t in threading.enumerate() if t.name == "procflow-watchdog"]
        assert len(watchdogs) == 1
        assert watchdogs[0].daemon


class TestThreadNames:
    def test_plain_capture_of_a_started_run_has_no_thread(self) -> None:
        """start() with plain captures starts no pump thread: the service thread drains them."""
        before = {t.name for t in threading.enumerate()}
        running = child("mix", "oe", 0, 200_000, 300_000).stdout_capture().stderr_capture().start()
        pid = running.pid
        names = {t.name for t in threading.enumerate()} - before
        assert not any(f"pid={pid}" in n for n in names), names
        result = running.wait(timeout=30)
        assert result.stdout == b"o" * 200_000
        assert result.stderr.startswith(b"e" * 300_000)

    def test_pump_threads_named_after_the_child(self) -> None:
        """Pump threads read like a sentence: procflow-feed[pid=N], procflow-drain[pid=N,stdout]."""
        with Supervisor():
            ready = threading.Event()
            running = (
                child("sleep_forever")
                .input(b"x")
                .stdout_capture()
                .on_stdout(lambda _l: ready.set())
                .stderr_capture()
                .on_stderr(lambda _l: None)  # a callback gets a thread (a plain capture goes to the service thread)
                .timeout(60)
                .start()
            )
            assert ready.wait(10)
            names = {t.name for t in threading.enumerate() if t.name.startswith("procflow-")}
            pid = running.pid
            assert f"procflow-drain[pid={pid},stdout]" in names
            assert f"procflow-drain[pid={pid},stderr]" in names
            assert f"procflow-wait[pid={pid}]" in names  # the background waiter enforcing the timeout
            others = names - {
                f"procflow-drain[pid={pid},stdout]",
                f"procflow-drain[pid={pid},stderr]",
                f"procflow-wait[pid={pid}]",
                f"procflow-feed[pid={pid}]",  # may already have finished writing its byte
                "procflow-watchdog",
            }
            assert not others, others


class TestDroppedHandle:
    def test_dropped_running_logs_leak(self) -> None:
        """A Running handle dropped without wait logs supervisor.leak kind child."""
        with capture_logs() as logs, Supervisor():
            running = child("sleep_forever").start()
            pid = running.pid
            del running
            gc.collect()
            leaks = events(logs, "supervisor.leak")
            assert [(e["kind"], e["pid"]) for e in leaks] == [("child", pid)]
            assert leaks[0]["argv"][-1] == "sleep_forever"

    def test_waited_handle_dropped_quietly(self) -> None:
        """A handle whose run was waited for logs nothing when dropped."""
        with capture_logs() as logs, Supervisor():
            running = child("exit", 0).start()
            running.wait(timeout=10)
            del running
            gc.collect()
        assert not events(logs, "supervisor.leak")

    def test_dropped_lines_iterator_stops_the_child(self) -> None:
        """A lines() iterator dropped before the end stops and reaps its child."""
        lines = child("sleep_forever").lines()
        assert next(lines) == "ready"
        pid = lines.pid
        del lines
        gc.collect()
        assert dead(pid)
