"""Process trees and time limits: timeouts, kill grace, wait delay, interrupts, EMFILE, recycled pids."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest
from conftest import child
from structlog.testing import capture_logs

from procflow import Cancel, ExitError, Proc, ProcTimeout, SpawnError, Supervisor

MAIN = threading.main_thread()


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has died (gone, or a zombie left for its new parent to reap), within ``timeout`` s."""
    end = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= end:
            return False
        tick.wait(0.005)


def reap_stray(pid: int, name: str) -> None:
    """Kill a process the test deliberately left behind (after checking it is the one we expect)."""
    try:
        p = psutil.Process(pid)
        assert name in " ".join(p.cmdline()), p.cmdline()
        p.kill()
    except psutil.NoSuchProcess:
        return
    assert gone(pid)


def wait_children(pid: int, n: int, timeout: float = 10.0) -> list[psutil.Process]:
    """Bounded wait until process ``pid`` has at least ``n`` descendants; returns them."""
    end = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        kids = psutil.Process(pid).children(recursive=True)
        if len(kids) >= n:
            return kids
        assert time.monotonic() < end, f"pid {pid} never had {n} children"
        tick.wait(0.01)


@contextmanager
def interrupt_when_waiting(is_waiting: Callable[[Any], bool]) -> Iterator[threading.Event]:
    """Deliver SIGINT to the main thread once it is blocked inside procflow's wait.

    A helper thread watches the main thread's innermost frame (a bounded loop)
    and signals it only once it sits in a poll() call made by procflow, so the
    KeyboardInterrupt is raised from inside the wait, not from the test's code.
    """
    sent = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        end = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < end:
            frame = sys._current_frames().get(MAIN.ident or 0)
            if frame is not None and is_waiting(frame):
                signal.pthread_kill(MAIN.ident or 0, signal.SIGINT)
                sent.set()
                return
            stop.wait(0.005)

    t = threading.Thread(target=watch, name="test-interrupter")
    t.start()
    try:
        yield sent
    finally:
        stop.set()
        t.join(10)


def in_procflow_poll(frame: Any) -> bool:
    """The main thread is blocked in a procflow poll (waiting for the child, its pipes or the time)."""
    return frame.f_code.co_name in ("_poll", "wait_event") and "procflow" in frame.f_code.co_filename


class TestTimeoutStopsTheTree:
    def test_shell_with_background_job(self) -> None:
        """A timed-out `sh -c 'sleep 60 & sleep 60; wait'` leaves none of its processes alive."""
        running = Proc("sh", "-c", "sleep 60 & sleep 60; wait").timeout(1).start()
        kids = wait_children(running.pid, 2)
        with pytest.raises(ProcTimeout) as info:
            running.wait(timeout=10)
        assert info.value.result.returncode == -signal.SIGTERM
        assert gone(running.pid)
        for k in kids:
            assert gone(k.pid), f"descendant {k.pid} still alive"

    def test_printed_grandchild_pids_are_gone(self) -> None:
        """Grandchildren named by the shell itself are dead after the timeout."""
        cmd = Proc("sh", "-c", "sleep 60 & echo $!; sleep 60 & echo $!; wait").stdout_capture().timeout(0.5)
        t0 = time.monotonic()
        with pytest.raises(ProcTimeout) as info:
            cmd.run()
        assert time.monotonic() - t0 < 0.5 + 2 + 1
        pids = [int(x) for x in info.value.result.stdout.split()]
        assert len(pids) == 2
        for pid in pids:
            assert gone(pid, timeout=1), f"grandchild {pid} survived the timeout"

    def test_setsid_grandchild_under_live_parent(self) -> None:
        """A grandchild that left the process group with setsid is found through psutil and stopped."""
        cmd = Proc("sh", "-c", "setsid sleep 60 & echo $!; wait").stdout_capture().timeout(0.5)
        with pytest.raises(ProcTimeout) as info:
            cmd.run()
        pid = int(info.value.result.stdout)
        assert gone(pid, timeout=1), f"setsid grandchild {pid} survived the timeout"

    def test_pipeline_timeout_stops_every_stage(self) -> None:
        """A pipeline's timeout stops every stage and their children."""
        cmd = (
            Proc("sh", "-c", "sleep 60 & echo $! >&2; sleep 60")
            | Proc("sh", "-c", "sleep 60 & echo $! >&2; cat")
        ).stderr_capture().timeout(0.5)
        with pytest.raises(ProcTimeout) as info:
            cmd.run()
        result = info.value.result
        assert [s.returncode for s in result.stages] == [-signal.SIGTERM, -signal.SIGTERM]
        for pid in [int(x) for x in result.stderr.split()]:
            assert gone(pid, timeout=1)

    def test_proc_timeout_is_timeout_error_with_partial_output(self) -> None:
        """ProcTimeout is a TimeoutError and carries what was read before the kill."""
        with pytest.raises(TimeoutError) as info:
            child("sleep_forever").stdout_capture().timeout(0.3).run()
        assert isinstance(info.value, ProcTimeout)
        assert info.value.result.stdout == b"ready\n"


class TestKillGrace:
    def test_sigterm_ends_a_normal_child(self) -> None:
        """A child that dies of the SIGTERM reports returncode -15."""
        with pytest.raises(ProcTimeout) as info:
            child("sleep_forever").stdout_capture().timeout(0.3).run()
        assert info.value.result.returncode == -signal.SIGTERM

    def test_sigkill_after_grace_for_a_child_ignoring_sigterm(self) -> None:
        """A child ignoring SIGTERM is SIGKILLed once kill_grace has passed; returncode -9."""
        t0 = time.monotonic()
        with capture_logs() as logs, pytest.raises(ProcTimeout) as info:
            child("ignore_sigterm").stdout_capture().timeout(0.3).kill_grace(0.5).run()
        elapsed = time.monotonic() - t0
        assert info.value.result.returncode == -signal.SIGKILL
        assert info.value.result.stdout == b"ready\n"
        assert 0.3 + 0.5 <= elapsed < 0.3 + 0.5 + 1.5
        kills = [e["signal"] for e in logs if e["event"] == "proc.kill"]
        assert kills == ["SIGTERM", "SIGKILL"]

    def test_zero_grace_kills_at_once(self) -> None:
        """kill_grace(0) means SIGKILL straight after SIGTERM."""
        t0 = time.monotonic()
        with pytest.raises(ProcTimeout) as info:
            child("ignore_sigterm").stdout_capture().timeout(0.3).kill_grace(0).run()
        assert info.value.result.returncode == -signal.SIGKILL
        assert time.monotonic() - t0 < 0.3 + 1.5

    def test_grandchild_ignoring_sigterm_is_killed_too(self) -> None:
        """A grandchild that ignores SIGTERM is SIGKILLed with the rest of the tree."""
        script = "trap '' TERM; sleep 60 & echo $!; wait"
        cmd = Proc("sh", "-c", script).stdout_capture().timeout(0.3).kill_grace(0.3)
        with pytest.raises(ProcTimeout) as info:
            cmd.run()
        # sh passes the ignored disposition on to the background sleep.
        assert gone(int(info.value.result.stdout), timeout=1)

    def test_terminate_on_running_stops_grandchildren(self) -> None:
        """Running.terminate() signals the whole tree, not only the direct child."""
        running = Proc("sh", "-c", "sleep 60 & echo $!; wait").stdout_capture().unchecked().start()
        wait_children(running.pid, 1)
        running.terminate()
        result = running.wait(timeout=10)
        assert gone(int(result.stdout), timeout=1)
        assert result.returncode == -signal.SIGTERM

    def test_kill_on_running(self) -> None:
        """Running.kill() ends a child that ignores SIGTERM with -9."""
        running = child("ignore_sigterm").stdout_capture().unchecked().start()
        running.kill()
        assert running.wait(timeout=10).returncode == -signal.SIGKILL


class TestWaitDelay:
    def test_background_job_holding_stdout(self) -> None:
        """`sh -c 'sleep 30 & echo done'` returns `done` promptly and reports the holder, not killing it."""
        delay = 0.5
        t0 = time.monotonic()
        with capture_logs() as logs:
            result = Proc("sh", "-c", "sleep 30 & echo done").stdout_capture().wait_delay(delay).run()
        elapsed = time.monotonic() - t0
        assert result.stdout == b"done\n"
        assert result.ok
        assert elapsed < delay + 2
        held = [e for e in logs if e["event"] == "pipe.held_open"]
        assert len(held) == 1
        assert held[0]["log_level"] == "warning"
        assert held[0]["pid"] == result.pid
        holders = held[0]["holders"]
        assert len(holders) == 1
        # Reported, not killed: the sleep is still there, and it is ours to clean up.
        assert psutil.Process(holders[0]).cmdline() == ["sleep", "30"]
        reap_stray(holders[0], "sleep")

    def test_setsid_grandchild_holding_the_pipe(self) -> None:
        """A grandchild that called setsid and holds stdout does not hang the run past the wait delay."""
        t0 = time.monotonic()
        with capture_logs() as logs:
            result = child("grandchild", "setsid").stdout_capture().wait_delay(0.3).run()
        assert time.monotonic() - t0 < 0.3 + 2
        pid = int(result.stdout.split()[1])
        try:
            held = [e for e in logs if e["event"] == "pipe.held_open"]
            assert [e["holders"] for e in held] == [[pid]]
            assert os.getsid(pid) == pid  # it really left our session
        finally:
            reap_stray(pid, "sleep_forever_quiet")

    def test_lines_with_held_pipe_end(self) -> None:
        """lines() ends after the wait delay when a grandchild keeps the pipe open."""
        t0 = time.monotonic()
        with capture_logs() as logs, child("grandchild", "exit").wait_delay(0.3).lines() as lines:
            got = list(lines)
        assert time.monotonic() - t0 < 0.3 + 2
        pid = int(got[0].split()[1])
        try:
            assert [e["holders"] for e in logs if e["event"] == "pipe.held_open"] == [[pid]]
        finally:
            reap_stray(pid, "sleep_forever_quiet")

    def test_daemon_that_closed_its_stdio_is_not_waited_for(self) -> None:
        """A child that forks a daemon (stdio closed) and exits returns at once, no held_open."""
        script = "(sleep 30 </dev/null >/dev/null 2>&1 & echo $!)"
        t0 = time.monotonic()
        with capture_logs() as logs:
            result = Proc("sh", "-c", script).stdout_capture().wait_delay(10).run()
        pid = int(result.stdout)
        try:
            assert time.monotonic() - t0 < 2
            assert not [e for e in logs if e["event"] == "pipe.held_open"]
            assert result.returncode == 0
        finally:
            reap_stray(pid, "sleep")

    def test_daemon_keeping_stdout(self) -> None:
        """A child that forks a daemon keeping stdout and exits: the output read so far, the daemon named."""
        with capture_logs() as logs:
            result = child("grandchild", "exit").stdout_capture().stderr_capture().wait_delay(0.3).run()
        pid = int(result.stdout.split()[1])
        try:
            assert result.ok
            held = [e for e in logs if e["event"] == "pipe.held_open"]
            assert len(held) == 1 and held[0]["holders"] == [pid]
        finally:
            reap_stray(pid, "sleep_forever_quiet")

    def test_timeout_during_the_wait_delay_stops_the_group(self) -> None:
        """A timeout that fires while waiting for the holders of the pipe stops those still in the group."""
        cmd = Proc("sh", "-c", "sleep 30 & echo $!").stdout_capture().timeout(0.5).wait_delay(10)
        t0 = time.monotonic()
        with pytest.raises(ProcTimeout) as info:
            cmd.run()
        assert time.monotonic() - t0 < 0.5 + 2
        assert info.value.result.returncode == 0  # the shell itself had exited
        assert gone(int(info.value.result.stdout), timeout=1)

    def test_timeout_during_the_wait_delay_setsid_holder(self) -> None:
        """A timeout while a setsid orphan holds the pipe stops it, or at least names it in pipe.held_open."""
        cmd = child("grandchild", "setsid").stdout_capture().timeout(0.5).wait_delay(10)
        with capture_logs() as logs, pytest.raises(ProcTimeout) as info:
            cmd.run()
        pid = int(info.value.result.stdout.split()[1])
        try:
            reported = [e["holders"] for e in logs if e["event"] == "pipe.held_open"] == [[pid]]
            assert gone(pid, timeout=1) or reported
        finally:
            reap_stray(pid, "sleep_forever_quiet")

    def test_zero_wait_delay(self) -> None:
        """wait_delay(0) returns as soon as the child exits."""
        t0 = time.monotonic()
        with capture_logs() as logs:
            result = child("grandchild", "exit").stdout_capture().wait_delay(0).run()
        pid = int(result.stdout.split()[1])
        try:
            assert time.monotonic() - t0 < 2
            assert any(e["event"] == "pipe.held_open" for e in logs)
        finally:
            reap_stray(pid, "sleep_forever_quiet")


class TestKeyboardInterrupt:
    def _check_stopped(self, pid: int, grandchild: int) -> None:
        assert gone(pid, timeout=1), "the child survived the interrupt"
        assert gone(grandchild, timeout=1), "the grandchild survived the interrupt"

    def test_in_run(self) -> None:
        """KeyboardInterrupt while run() waits: the tree is stopped and reaped, then it propagates."""
        pids: list[int] = []
        cmd = child("grandchild", "hold").on_stdout(lambda line: pids.append(int(line.split()[1])))
        waiting = interrupt_when_waiting(lambda f: bool(pids) and in_procflow_poll(f))
        with capture_logs() as logs, waiting as sent, pytest.raises(KeyboardInterrupt):
            cmd.run()
        assert sent.is_set()
        spawned = [e["pid"] for e in logs if e["event"] == "proc.spawn"]
        exited = [e["pid"] for e in logs if e["event"] == "proc.exit"]
        assert spawned == exited  # reaped by procflow before the exception went on
        self._check_stopped(spawned[0], pids[0])

    def test_in_wait(self) -> None:
        """KeyboardInterrupt while Running.wait() waits: the tree is stopped and reaped."""
        pids: list[int] = []
        running = child("grandchild", "hold").on_stdout(lambda line: pids.append(int(line.split()[1]))).start()
        waiting = interrupt_when_waiting(lambda f: bool(pids) and in_procflow_poll(f))
        with waiting as sent, pytest.raises(KeyboardInterrupt):
            running.wait()
        assert sent.is_set()
        result = running.poll()
        assert result is not None and result.returncode == -signal.SIGTERM
        with pytest.raises(ExitError, match="SIGTERM"):  # later waits report how it ended
            running.wait(timeout=10)
        self._check_stopped(running.pid, pids[0])

    def test_in_wait_with_background_waiter(self) -> None:
        """With a timeout set (a background waiter owns the wait) an interrupt still stops the tree."""
        pids: list[int] = []
        running = (
            child("grandchild", "hold").on_stdout(lambda line: pids.append(int(line.split()[1]))).timeout(60).start()
        )

        def waiting(frame: Any) -> bool:
            # Blocked in finish() on the execution's lock, or in its poll.
            return bool(pids) and frame.f_code.co_name in ("finish", "_poll", "wait_event")

        with interrupt_when_waiting(waiting) as sent, pytest.raises(KeyboardInterrupt):
            running.wait()
        assert sent.is_set()
        assert running.poll() is not None
        self._check_stopped(running.pid, pids[0])

    def test_in_lines(self) -> None:
        """KeyboardInterrupt while lines() waits for the next line stops the tree and closes the pipes."""
        lines = child("grandchild", "hold").lines()
        first = next(lines)
        grandchild = int(first.split()[1])
        with interrupt_when_waiting(in_procflow_poll) as sent, pytest.raises(KeyboardInterrupt):
            next(lines)
        assert sent.is_set()
        assert lines.result is not None  # finished: reaped, pipes closed
        self._check_stopped(lines.pid, grandchild)
        lines.close()


EMFILE_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    sys.path.insert(0, sys.argv[1])
    from procflow import Proc, SpawnError

    def fds():
        return sorted(int(f) for f in os.listdir("/proc/self/fd"))

    def cmd():
        cat = (sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())")
        return (Proc(*cat) | Proc(*cat)).input(b"hello").stdout_capture().stderr_capture()

    cmd().run()  # warm up: the watchdog thread, lazy imports
    # Fill the holes below the highest fd, so that the limit counts exactly the free fds.
    top = max(fds())
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(top + 1 - len(fds()))]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    outcomes = []
    for extra in range(0, 30):
        before = fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + extra, hard))
        try:
            r = cmd().run()
            outcome = {"ok": r.stdout == b"hello", "extra": extra}
        except SpawnError as e:
            outcome = {"error": "SpawnError", "msg": str(e), "errno": e.errno, "extra": extra}
        except OSError as e:
            outcome = {"error": type(e).__name__, "msg": str(e), "errno": e.errno, "extra": extra}
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        outcome["leaked"] = sorted(set(fds()) - set(before))
        outcomes.append(outcome)
    for fd in fillers:
        os.close(fd)
    print(json.dumps(outcomes))
    """
)



class TestSpawnFailures:
    def test_emfile_gives_clear_error_and_leaks_nothing(self, tmp_path: Any) -> None:
        """Running out of fds while spawning gives a clear error and leaks no fd, at every point."""
        script = tmp_path / "emfile.py"
        script.write_text(EMFILE_SCRIPT)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(
            [sys.executable, str(script), root], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        outcomes = json.loads(out)
        errors = [o for o in outcomes if "error" in o]
        assert errors, "the limit never made spawning fail"
        assert any(o.get("ok") for o in outcomes), "the run never succeeded even with room"
        for o in outcomes:
            assert o["leaked"] == [], o
        for o in errors:
            # Whichever fd ran out (a pipe, a pidfd, the exec itself): a SpawnError naming the program.
            assert o["error"] == "SpawnError", o
            assert o["errno"] == errno.EMFILE, o
            assert "too many open files" in o["msg"] and sys.executable in o["msg"], o

    def test_spawn_error_leaves_no_earlier_stage(self) -> None:
        """When a later stage cannot start, the stages already started are stopped and reaped."""
        with capture_logs() as logs, pytest.raises(SpawnError):
            (child("sleep_forever") | Proc("no-such-program-procflow-xyz")).run()
        spawned = [e["pid"] for e in logs if e["event"] == "proc.spawn"]
        exited = [e["pid"] for e in logs if e["event"] == "proc.exit"]
        assert spawned and spawned == exited


class TestBadLimits:
    @pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, math.nan, math.inf])
    def test_timeout_must_be_positive(self, value: float) -> None:
        """timeout() rejects zero, negative, NaN and infinite values at once."""
        with pytest.raises(ValueError, match="timeout"):
            Proc("true").timeout(value)

    @pytest.mark.parametrize("method", ["kill_grace", "wait_delay"])
    @pytest.mark.parametrize("value", [-1, -0.001, math.nan, math.inf])
    def test_graces_must_not_be_negative(self, method: str, value: float) -> None:
        """kill_grace() and wait_delay() reject negative, NaN and infinite values at once."""
        with pytest.raises(ValueError, match=method):
            getattr(Proc("true"), method)(value)

    @pytest.mark.parametrize("method", ["timeout", "kill_grace", "wait_delay"])
    @pytest.mark.parametrize("value", ["1", None, True])
    def test_limits_must_be_numbers(self, method: str, value: object) -> None:
        """A limit that is not a number is a TypeError at the builder."""
        with pytest.raises(TypeError):
            getattr(Proc("true"), method)(value)

    @pytest.mark.parametrize("kwargs", [{"blocked_after": 0}, {"blocked_after": -1}, {"kill_grace": -1}])
    def test_supervisor_limits(self, kwargs: dict[str, float]) -> None:
        """Supervisor rejects a non-positive blocked_after and a negative kill_grace."""
        with pytest.raises(ValueError):
            Supervisor(**kwargs)

    @pytest.mark.parametrize("value", [0, -1, math.nan])
    def test_cancel_deadline(self, value: float) -> None:
        """Cancel(deadline=...) must be positive."""
        with pytest.raises(ValueError):
            Cancel(deadline=value)

    def test_shutdown_grace(self) -> None:
        """shutdown(grace=-1) is a ValueError."""
        with pytest.raises(ValueError):
            Supervisor().shutdown(grace=-1)

    def test_original_unchanged(self) -> None:
        """A rejected limit leaves nothing half-applied."""
        p = Proc("true").timeout(5)
        with pytest.raises(ValueError):
            p.timeout(-1)
        assert p == Proc("true").timeout(5)


class TestNoRecycledPid:
    def test_signals_after_the_end_do_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Once a run has ended, terminate()/kill()/send_signal() send nothing and raise nothing."""
        running = child("exit", 0).start()
        result = running.wait(timeout=10)
        assert result.returncode == 0
        sent: list[tuple[str, object]] = []

        def record(name: str) -> Callable[..., None]:
            return lambda *a: sent.append((name, a))

        monkeypatch.setattr(os, "kill", record("kill"))
        monkeypatch.setattr(os, "killpg", record("killpg"))
        monkeypatch.setattr(signal, "pidfd_send_signal", record("pidfd_send_signal"))
        monkeypatch.setattr(psutil.Process, "send_signal", lambda self, sig: sent.append(("psutil", self.pid)))
        running.terminate()
        running.kill()
        running.send_signal(signal.SIGUSR1)
        assert sent == []
        assert running.poll() is result

    def test_terminate_after_exit_before_wait(self) -> None:
        """terminate() on a child that exited but was not waited yet is harmless; the exit status stays."""
        running = child("exit", 3).unchecked().start()
        zombie = psutil.Process(running.pid)
        end = time.monotonic() + 10
        tick = threading.Event()
        while zombie.status() != psutil.STATUS_ZOMBIE:  # exited, not reaped yet: the pid is still ours
            assert time.monotonic() < end
            tick.wait(0.01)
        running.terminate()
        running.kill()
        assert running.wait(timeout=10).returncode == 3


class TestWaitidFallback:
    """Kernels without pidfds: a waitid(WNOWAIT) thread tells the run that a child exited."""

    def test_run_capture_timeout_and_tree_kill_without_pidfd(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """run(), a timeout and a tree kill behave the same on the fallback."""
        import procflow._spawn

        monkeypatch.setattr(procflow._spawn, "_force_no_pidfd", True)
        r = child("mix", "oe", 0, 70_000, 10).stdout_capture().stderr_capture().run()
        assert r.stdout == b"o" * 70_000 and r.returncode == 0
        assert Proc("sh", "-c", "exit 3").unchecked().run().returncode == 3
        with pytest.raises(ProcTimeout) as info:
            Proc("sh", "-c", "sleep 60 & sleep 60; wait").timeout(0.3).kill_grace(1).run()
        assert info.value.result.returncode == -signal.SIGTERM
