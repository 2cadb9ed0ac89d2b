"""Cancel: a token that stops runs from any thread, with an optional deadline."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from conftest import child
from structlog.testing import capture_logs

from procflow import Cancel, Cancelled, Proc, Supervisor, run_all

#: What the contract allows after cancel(): the kill grace plus half a second.
SLACK = 0.5


class CancelWhen:
    """Cancel ``token`` from a helper thread once ``ready`` is set; records when."""

    def __init__(self, token: Cancel, reason: object = None) -> None:
        self.token = token
        self.reason = reason
        self.ready = threading.Event()
        self.at: float | None = None
        self.thread = threading.Thread(target=self._run, name="test-canceller")
        self.thread.start()

    def _run(self) -> None:
        if self.ready.wait(10):
            self.at = time.monotonic()
            self.token.cancel(self.reason)

    def on_line(self, line: str) -> None:
        if line == "ready":
            self.ready.set()

    def join(self) -> float:
        """Wait for the helper; returns the time cancel() was called."""
        self.ready.set()
        self.thread.join(10)
        assert self.at is not None
        return self.at


class TestCancelStopsTheRun:
    def test_cancel_from_another_thread(self) -> None:
        """cancel() from another thread stops the child and raises Cancelled with the partial result."""
        token = Cancel()
        canceller = CancelWhen(token, "user pressed stop")
        cmd = child("sleep_forever").stdout_capture().on_stdout(canceller.on_line).kill_grace(1)
        with pytest.raises(Cancelled) as info:
            cmd.run(cancel=token)
        raised = time.monotonic()
        elapsed = raised - canceller.join()
        assert elapsed < 1 + SLACK
        result = info.value.result
        assert result.stdout == b"ready\n"
        assert result.returncode == -signal.SIGTERM
        assert "user pressed stop" in str(info.value)
        assert token.reason == "user pressed stop"

    def test_child_ignoring_sigterm_within_grace(self) -> None:
        """A child ignoring SIGTERM is killed after the grace; Cancelled comes within grace + 0.5 s."""
        token = Cancel()
        canceller = CancelWhen(token)
        grace = 0.5
        cmd = child("ignore_sigterm").stdout_capture().on_stdout(canceller.on_line).kill_grace(grace)
        with pytest.raises(Cancelled) as info:
            cmd.run(cancel=token)
        elapsed = time.monotonic() - canceller.join()
        assert grace <= elapsed < grace + SLACK
        assert info.value.result.returncode == -signal.SIGKILL

    def test_cancel_stops_grandchildren(self) -> None:
        """Cancel stops the whole tree, grandchildren included."""
        token = Cancel()
        pids: list[int] = []
        canceller = CancelWhen(token)

        def on_line(line: str) -> None:
            pids.append(int(line))
            canceller.ready.set()

        cmd = Proc("sh", "-c", "sleep 60 & echo $!; wait").on_stdout(on_line)
        with pytest.raises(Cancelled):
            cmd.run(cancel=token)
        canceller.join()
        try:
            status = psutil.Process(pids[0]).status()
        except psutil.NoSuchProcess:
            status = "gone"
        assert status in ("gone", psutil.STATUS_ZOMBIE)

    def test_feeder_blocked_on_a_full_pipe(self) -> None:
        """A feeder blocked writing to a child that never reads its stdin is stopped by cancel."""
        token = Cancel()
        canceller = CancelWhen(token)
        cmd = child("sleep_forever").input(b"x" * (4 << 20)).on_stdout(canceller.on_line).kill_grace(1)
        with pytest.raises(Cancelled):
            cmd.run(cancel=token)
        assert time.monotonic() - canceller.join() < 1 + SLACK
        # The leak check of conftest proves the feeder thread and its pipe are gone.

    def test_feeder_pulling_from_an_endless_generator(self) -> None:
        """A feeder pulling from an endless generator stops between chunks when cancelled."""
        token = Cancel()
        canceller = CancelWhen(token)
        pulled = 0

        def endless() -> Iterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 1
                if pulled == 100:
                    canceller.ready.set()
                yield b"y" * 4096

        with pytest.raises(Cancelled):
            child("cat").input(endless()).stdout_null().kill_grace(1).run(cancel=token)
        assert time.monotonic() - canceller.join() < 1 + SLACK
        assert pulled >= 100
        # Nothing pulls from the generator any more: the feeder thread has ended.
        assert not [t for t in threading.enumerate() if t.name.startswith("procflow-feed")]

    def test_feeder_stuck_in_the_callers_iterator_is_abandoned(self) -> None:
        """A feeder stuck inside the caller's iterator is abandoned: Cancelled still comes, the thread is reported."""
        token = Cancel()
        release = threading.Event()
        inside = threading.Event()

        def stuck() -> Iterator[bytes]:
            yield b"first\n"
            inside.set()
            release.wait(30)  # the caller's own code, which procflow cannot interrupt

        canceller = CancelWhen(token)
        try:
            with Supervisor(kill_grace=0.2) as sup:
                echoed = threading.Event()
                cmd = child("cat").input(stuck()).stdout_capture().on_stdout(lambda _line: echoed.set())
                running = cmd.kill_grace(0.2).start(cancel=token)
                assert inside.wait(10) and echoed.wait(10)
                canceller.ready.set()
                with pytest.raises(Cancelled) as info:
                    running.wait(timeout=10)
                assert time.monotonic() - canceller.join() < 0.2 + SLACK
                assert info.value.result.stdout == b"first\n"
                report = sup.shutdown()
            assert [t for t in report.threads if t.startswith("procflow-feed")], report
        finally:
            release.set()
        # Released, the feeder sees the stop and exits: conftest's leak check joins it.

    def test_lines_cancelled(self) -> None:
        """A cancel during lines() makes the iteration raise Cancelled and stops the child."""
        token = Cancel()
        with child("sleep_forever").lines(cancel=token) as lines:
            assert next(lines) == "ready"
            threading.Thread(target=token.cancel, args=("enough",)).start()
            t0 = time.monotonic()
            with pytest.raises(Cancelled, match="enough"):
                next(lines)
            assert time.monotonic() - t0 < 2 + SLACK

    def test_chunks_cancelled(self) -> None:
        """A cancel during chunks() raises Cancelled."""
        token = Cancel()
        with child("sleep_forever").chunks(cancel=token) as chunks:
            assert next(chunks) == b"ready\n"
            token.cancel()
            with pytest.raises(Cancelled):
                next(chunks)


class TestCancelToken:
    def test_cancelled_before_start_spawns_nothing(self) -> None:
        """A token cancelled before the run starts: Cancelled at once, no process spawned."""
        token = Cancel()
        token.cancel("too late")
        with capture_logs() as logs, pytest.raises(Cancelled, match="too late") as info:
            child("sleep_forever").run(cancel=token)
        assert not [e for e in logs if e["event"] == "proc.spawn"]
        assert info.value.result.pid == 0

    @pytest.mark.parametrize("method", ["run", "read", "lines", "chunks", "start", "reader", "writer"])
    def test_cancelled_before_every_running_method(self, method: str) -> None:
        """Every running method refuses to spawn with an already-cancelled token."""
        token = Cancel()
        token.cancel()
        with capture_logs() as logs, pytest.raises(Cancelled):
            getattr(child("sleep_forever"), method)(cancel=token)
        assert not [e for e in logs if e["event"] == "proc.spawn"]

    def test_cancel_twice_is_harmless(self) -> None:
        """A second cancel() does nothing: the first reason stays."""
        token = Cancel()
        running = child("sleep_forever").stdout_capture().start(cancel=token)
        token.cancel("first")
        token.cancel("second")
        with pytest.raises(Cancelled, match="first"):
            running.wait(timeout=10)
        token.cancel("third")
        assert token.reason == "first"
        assert token.cancelled

    def test_default_reason(self) -> None:
        """cancel() without a reason records 'cancelled'."""
        token = Cancel()
        assert token.reason is None
        token.cancel()
        assert token.reason == "cancelled"

    def test_deadline_cancels_by_itself(self) -> None:
        """A token with a deadline cancels the run when it passes, reason 'deadline exceeded'."""
        token = Cancel(deadline=0.3)
        assert token.deadline == 0.3
        t0 = time.monotonic()
        with pytest.raises(Cancelled, match="deadline exceeded") as info:
            child("sleep_forever").stdout_capture().run(cancel=token)
        assert 0.3 <= time.monotonic() - t0 < 0.3 + 2 + SLACK
        assert info.value.result.stdout == b"ready\n"
        assert token.cancelled and token.reason == "deadline exceeded"

    def test_deadline_on_a_started_run_nobody_waits_for(self) -> None:
        """The deadline is enforced even while nobody is waiting on the handle."""
        token = Cancel(deadline=0.2)
        running = child("sleep_forever").start(cancel=token)
        assert token.wait(10)
        # The background waiter stops the child by itself; wait() only collects the outcome.
        with pytest.raises(Cancelled):
            running.wait(timeout=5)

    def test_wait_returns_when_cancelled(self) -> None:
        """Cancel.wait() returns True once cancelled from another thread, False on its timeout."""
        token = Cancel()
        assert token.wait(0.01) is False
        threading.Thread(target=token.cancel).start()
        assert token.wait(10) is True

    def test_shared_token_stops_every_run(self) -> None:
        """One token shared by several runs (handles, a run in a thread) stops them all."""
        token = Cancel()
        handles = [child("sleep_forever").stdout_capture().start(cancel=token) for _ in range(3)]
        outcome: list[BaseException] = []
        started = threading.Event()

        def run_one() -> None:
            try:
                child("sleep_forever").on_stdout(lambda _line: started.set()).run(cancel=token)
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=run_one)
        t.start()
        assert started.wait(10)
        token.cancel("all of them")
        t.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
        for h in handles:
            with pytest.raises(Cancelled, match="all of them"):
                h.wait(timeout=10)
        # The token is spent: a new run with it does not start.
        with pytest.raises(Cancelled):
            child("sleep_forever").run(cancel=token)

    def test_cancel_on_start_handle(self) -> None:
        """Cancelling a start() handle's token: wait() raises Cancelled, poll() gives the result."""
        token = Cancel()
        running = child("sleep_forever").stdout_capture().start(cancel=token)
        token.cancel()
        with pytest.raises(Cancelled) as info:
            running.wait(timeout=10)
        assert info.value.result.returncode == -signal.SIGTERM
        polled = running.poll()
        assert polled is not None and polled.returncode == -signal.SIGTERM

    def test_finished_run_ignores_a_later_cancel(self) -> None:
        """Cancelling after a run finished changes nothing about its result."""
        token = Cancel()
        result = child("echo", "hi").stdout_capture().run(cancel=token)
        token.cancel()
        assert result.ok and result.stdout == b"hi\n"

    def test_run_all_with_cancel(self) -> None:
        """A token given to run_all stops every command it runs."""
        token = Cancel()
        ready = threading.Semaphore(0)
        cmds = [child("sleep_forever").on_stdout(lambda _line: ready.release()) for _ in range(2)]
        outcome: list[BaseException] = []

        def go() -> None:
            try:
                run_all(cmds, jobs=2, cancel=token)
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=go)
        t.start()
        assert ready.acquire(timeout=10) and ready.acquire(timeout=10)
        token.cancel()
        t.join(10)
        assert not t.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)


class TestBadArguments:
    @pytest.mark.parametrize("deadline", ["1", [1], True])
    def test_deadline_type(self, deadline: object) -> None:
        """Cancel(deadline=...) takes a number."""
        with pytest.raises(TypeError):
            Cancel(deadline=deadline)  # type: ignore[arg-type]

    def test_cancel_argument_type(self) -> None:
        """cancel= must be a Cancel: a TypeError before anything is spawned."""
        with capture_logs() as logs, pytest.raises(TypeError, match="Cancel"):
            child("sleep_forever").run(cancel=object())  # type: ignore[arg-type]
        assert not logs

    def test_repr(self) -> None:
        """The token's repr says whether it was cancelled."""
        token = Cancel(deadline=5)
        assert "active" in repr(token)
        token.cancel()
        assert "cancelled" in repr(token)
