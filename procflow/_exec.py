"""The engine: one run of a command or pipeline, from spawn to result.

Ownership, in one place:

* ``Execution`` owns every parent-side fd until it hands it to a pump (which
  then closes it) or to the caller's stream (``lines``/``reader``/``writer``,
  closed by ``finish``). The child's ends are closed right after each spawn.
* Waiting has one fixed order: reap the children, join the pumps (bounded by
  the wait delay), close what is left. A pump's exception is re-raised in the
  waiting thread after the tree is stopped and reaped.
* A run that must stop (timeout, cancel, a pump's error, the caller's
  exception) goes through ``abort``: SIGTERM to the whole tree, SIGKILL after
  the grace, reap, stop the pumps, close.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._cancel import Cancel
from ._errors import Cancelled, OutputLimitExceeded, ProcTimeout, SpawnError, quote_argv
from ._log import emit
from ._pumps import Drainer, Feeder, LimitHit, Signals
from ._result import Result, stage_failed
from ._spawn import check_cwd
from ._spec import StageSpec
from ._stage import StageRun
from ._supervisor import Supervisor
from ._tree import TreeControl
from ._wiring import Wiring

__all__ = ["Execution", "Mode"]

Mode = str  # "run" | "start" | "out" (caller reads stdout) | "in" (caller writes stdin)

#: How long pumps may take to reach EOF after the tree was killed, before
#: they are told to stop (the total stays within the API's grace + 0.5 s).
_DRAIN_AFTER_KILL = 0.2
#: How long stopped pumps get to notice the stop before they are abandoned (one stuck in
#: the caller's own iterator or callback cannot be interrupted); with the drain above it
#: keeps Cancelled/ProcTimeout within grace + 0.5 s.
_JOIN_AFTER_STOP = 0.2


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _LimitReached(Exception):
    pass


class Execution(Wiring, TreeControl):
    """One run of a pipeline (a single command is a one-stage pipeline)."""

    def __init__(
        self,
        specs: Sequence[StageSpec],
        mode: Mode,
        cancel: Cancel | None,
        supervisor: Supervisor,
    ) -> None:
        self.specs = list(specs)
        self.mode = mode
        self.cancel = cancel
        self.supervisor = supervisor
        self.stages = [StageRun(i, s) for i, s in enumerate(self.specs)]
        self.pumps: list[Feeder | Drainer] = []
        self.signals: Signals | None = None
        self.out_fd: int | None = None  # mode "out": the caller reads the last stage's stdout here
        self.in_fd: int | None = None  # mode "in": the caller writes the first stage's stdin here
        self.pgid: int | None = None
        self.started = 0.0
        timeouts = [s.timeout for s in self.specs if s.timeout is not None]
        self.timeout = min(timeouts) if timeouts else None
        self.deadline: float | None = None
        self.kill_grace = max(s.kill_grace for s in self.specs)
        self.wait_delay = max(s.wait_delay for s in self.specs)
        self._stop_reason: str | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._lock = threading.RLock()  # one waiter at a time
        self._outcome: Result | BaseException | None = None
        self._finished = False
        self._aborted = False
        self.stdin_broken = False
        self._sink_fds: list[int] = []  # path sinks of tees, opened by us, closed in _close_all

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Spawn every stage and start the pumps; on failure nothing is left."""
        if self.cancel is not None and self.cancel.cancelled:
            self.started = time.monotonic()
            self._finished = True
            self._outcome = self._error_for("cancel", self._empty_result())
            raise self._outcome
        for spec in self.specs:
            check_cwd(spec)
        try:
            self.signals = Signals()
        except OSError as e:
            exhausted = self._fd_exhausted(e)
            if exhausted is None:
                raise
            raise exhausted from e
        self.started = time.monotonic()
        if self.timeout is not None:
            self.deadline = self.started + self.timeout
        # Registered before the first spawn, and spawning under the run's lock: a
        # supervisor shutting down meanwhile waits for the spawn, then stops the run.
        with self._lock:
            self.supervisor._add(self)
            try:
                self._spawn_all()
            except BaseException as e:
                self._abort()
                self._close_all()
                self.supervisor._discard(self)
                self._finished = True
                exhausted = self._fd_exhausted(e) if isinstance(e, OSError) and not isinstance(e, SpawnError) else None
                if exhausted is None:
                    raise
                raise exhausted from e
        if self.cancel is not None:
            signals = self.signals

            def on_cancel() -> None:
                signals.wake()

            self._unsubscribe = self.cancel._subscribe(on_cancel)

    # --------------------------------------------------------------- waiting
    def live_children(self) -> list[tuple[int, tuple[str, ...], float]]:
        return [(s.pid, s.argv, s.started) for s in self.stages if s.pid and not s.reaped]

    @property
    def finished(self) -> bool:
        return self._finished

    def _interrupt_reason(self) -> str | None:
        if self._stop_reason is not None:
            return self._stop_reason
        for p in self.pumps:
            if p.error is not None:
                return "error"
        if self.cancel is not None and self.cancel.cancelled:
            return "cancel"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        return None

    def _time_left(self, limit: float | None, extra: float | None = None) -> float | None:
        ends = [t for t in (limit, self.deadline, extra) if t is not None]
        if self.cancel is not None and self.cancel.expires_at is not None:
            ends.append(self.cancel.expires_at)
        if not ends:
            return None
        return min(ends) - time.monotonic()

    def _poll(self, fds: list[tuple[int, int]], timeout: float | None) -> set[int]:
        p = select.poll()
        for fd, ev in fds:
            p.register(fd, ev)
        ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        return {fd for fd, _ in p.poll(ms)}

    def reap_exited(self) -> bool:
        """Note every stage that has exited (without reaping it); True when all have."""
        return all([st.check_exited() for st in self.stages])

    def wait_event(self, limit: float | None, extra: list[tuple[int, int]] = ()) -> set[int]:  # type: ignore[assignment]
        """One round of waiting: for a child's exit, a wake-up, ``extra`` fds or the time.

        Reaps what exited; raises _Stop when the run must stop, _LimitReached
        at ``limit``. Returns the ready fds among ``extra``.
        """
        signals = self._signals()
        reason = self._interrupt_reason()
        if reason is not None:
            raise _Stop(reason)
        left = self._time_left(limit)
        if left is not None and left <= 0:
            if limit is not None and time.monotonic() >= limit:
                raise _LimitReached()
            reason = self._interrupt_reason()
            raise _Stop(reason or "timeout")
        watched = [st for st in self.stages if not st.exited and st.watch is not None]
        inline = self._inline_pumps()
        fds = [(signals.wake_r, select.POLLIN)]
        fds += [(st.watch.fd, select.POLLIN) for st in watched]  # type: ignore[union-attr]
        fds += [(p.fd, select.POLLIN) for p in inline]
        fds += list(extra)
        ready = self._poll(fds, left)
        if ready:
            if signals.wake_r in ready:
                signals.drain_wake()
            for p in inline:
                if p.fd in ready:
                    p.service()
            for st in watched:
                if st.watch is not None and st.watch.fd in ready:
                    st.ended = time.monotonic()
        return ready & {fd for fd, _ in extra}

    def _inline_pumps(self) -> list[Feeder | Drainer]:
        return [p for p in self.pumps if p.inline and not p.done.is_set()]

    def _service_round(self, timeout: float | None) -> None:
        """Wait once for a wake-up or an inline pump's pipe, and service what is ready."""
        inline = self._inline_pumps()
        signals = self._signals()
        fds = [(signals.wake_r, select.POLLIN)] + [(p.fd, select.POLLIN) for p in inline]
        ready = self._poll(fds, timeout)
        if signals.wake_r in ready:
            signals.drain_wake()
        for p in inline:
            if p.fd in ready:
                p.service()

    def _wait_exits(self, limit: float | None) -> None:
        while not all(st.exited for st in self.stages):
            self.wait_event(limit)

    def _wait_pumps(self, limit: float | None) -> None:
        if all(p.done.is_set() for p in self.pumps):
            return
        held_at = time.monotonic() + self.wait_delay
        while not all(p.done.is_set() for p in self.pumps):
            if time.monotonic() >= held_at:
                self._held_open_expired()
                return
            left = self._time_left(limit, held_at)
            reason = self._interrupt_reason()
            if reason is not None:
                raise _Stop(reason)
            if left is not None and left <= 0:
                if limit is not None and time.monotonic() >= limit:
                    raise _LimitReached()
                continue
            self._service_round(left)

    def _held_open_expired(self) -> None:
        """The children exited but their pipes are still open after the wait delay."""
        fds = [p.fd for p in self.pumps if not p.done.is_set()]
        if self.out_fd is not None:
            fds.append(self.out_fd)
        pids = self.held_open_pids(fds)
        last = self.stages[-1]
        emit("pipe.held_open", pid=last.pid, argv=list(last.argv), holders=pids, wait_delay=self.wait_delay)
        self._stop_pumps()

    def _stop_pumps(self) -> None:
        self._signals().stop()
        deadline = time.monotonic() + _JOIN_AFTER_STOP
        for p in self.pumps:
            p.join(max(0.0, deadline - time.monotonic()))

    # -------------------------------------------------------------- stopping
    def _abort(self) -> None:
        """Stop the tree, reap it, stop the pumps. Safe to call more than once."""
        if self._aborted:
            return
        self._aborted = True
        if self.signals is not None:
            self.signals.quiet = True  # EPIPE from here on is our own doing: not worth a warning
        self.kill_tree(self.kill_grace, log=self._stop_reason != "stopped")
        if self.signals is None:
            return
        # Let the pumps collect what the dead children left in the pipes, briefly.
        deadline = time.monotonic() + min(self.wait_delay, _DRAIN_AFTER_KILL)
        while not all(p.done.is_set() for p in self.pumps):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._service_round(left)
        self._stop_pumps()

    def abandon(self, grace: float) -> None:
        """Used by Supervisor.shutdown: stop everything now, keep the result for later."""
        self.kill_grace = grace
        self.interrupt("shutdown")  # a background waiter holding the lock stops too
        with self._lock:
            if self._finished:
                return
            self._abort()
            self._finish_collect()

    def interrupt(self, reason: str) -> None:
        """Ask the waiting thread (or the background waiter) to stop the run."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self.signals is not None:
            self.signals.wake()

    # ------------------------------------------------------------- finishing
    def _close_all(self) -> None:
        for attr in ("out_fd", "in_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                try:
                    os.close(fd)
                except OSError:
                    pass
        for fd in self._sink_fds:
            os.close(fd)
        self._sink_fds = []
        for st in self.stages:
            if st.watch is not None:
                st.watch.close()
                st.watch = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.signals is not None:
            signals, self.signals = self.signals, None
            signals.release()

    def _finish_collect(self) -> Result:
        for st in self.stages:  # every stage has exited by now; reaping waits for nothing
            if st.pid and not st.reaped:
                st.reap(block=True)
        # A pump that is done still holds the signal pipes until its last line runs: join it,
        # so that when the run returns none of its fds is open (an abandoned pump is not done).
        me = threading.current_thread()
        for p in self.pumps:
            if p.done.is_set() and p.thread is not None and p.thread is not me:
                p.thread.join(1.0)
        self._close_all()
        self._finished = True
        self.supervisor._discard(self)
        result = self._build_result()
        if self._outcome is None:
            self._outcome = result
        return result

    def _empty_result(self) -> Result:
        now = time.monotonic()
        stages = tuple(
            Result(st.argv, st.returncode or 0, None, None, st.pid, now - (st.started or now), 0.0, 0)
            for st in self.stages
        )
        last = stages[-1]
        return Result(last.argv, 0, None, None, last.pid, 0.0, 0.0, 0, stages=stages if len(stages) > 1 else None)

    def _decode(self, spec: StageSpec, data: bytes | None) -> Any:
        if data is None or spec.encoding is None:
            return data
        return data.decode(spec.encoding, spec.errors)

    def _build_result(self) -> Result:
        end = time.monotonic()
        stage_results = []
        n = len(self.stages)
        for st in self.stages:
            out = st.out_capture.getvalue() if st.out_capture is not None else None
            err = st.err_capture.getvalue() if st.err_capture is not None else None
            rc = st.returncode if st.returncode is not None else 0
            r = Result(
                st.argv,
                rc,
                self._decode(st.spec, out),
                self._decode(st.spec, err),
                st.pid,
                (st.ended or end) - (st.started or end),
                st.cpu_time,
                st.max_rss,
                failed_stage=0 if stage_failed(st.index, n, rc) else None,
                checked=not st.spec.unchecked,
            )
            stage_results.append(r)
        if n == 1:
            return stage_results[0]
        failing = None
        for i in range(n - 1, -1, -1):
            if stage_failed(i, n, stage_results[i].returncode):
                failing = i
                break
        last = stage_results[-1]
        errs = [r.stderr for r in stage_results if r.stderr is not None]
        stderr: Any = None
        if errs and any(isinstance(e, str) for e in errs):
            # Stages with and without .text(): the joined stderr is text, bytes decoded leniently.
            stderr = "".join(e if isinstance(e, str) else e.decode("utf-8", "replace") for e in errs)
        elif errs:
            stderr = b"".join(errs)
        return Result(
            last.argv,
            stage_results[failing].returncode if failing is not None else 0,
            last.stdout,
            stderr,
            last.pid,
            end - self.started,
            sum(r.cpu_time for r in stage_results),
            max(r.max_rss for r in stage_results),
            stages=tuple(stage_results),
            failed_stage=failing,
            checked=failing is None or not self.specs[failing].unchecked,
        )

    def _error_for(self, reason: str, result: Result) -> BaseException:
        # Shell-quoted like ExitError; a pipeline is named whole (every stage was stopped).
        cmd = " | ".join(quote_argv(st.argv) for st in self.stages)
        if reason == "timeout":
            return ProcTimeout(f"command {cmd} timed out after {self.timeout} s; its process tree was stopped",
                               result)
        if reason == "cancel":
            why = self.cancel.reason if self.cancel is not None else None
            return Cancelled(f"command {cmd} was cancelled ({why})", result)
        if reason == "shutdown":
            return Cancelled(f"command {cmd} was stopped by its supervisor's shutdown", result)
        for p in self.pumps:
            if isinstance(p.error, LimitHit):
                err = OutputLimitExceeded(
                    f"command {cmd}: captured {p.error.stream} passed max_bytes={p.error.max_bytes}; "
                    "the process tree was stopped",
                    result,
                )
                err.stream = p.error.stream
                return err
        for p in self.pumps:
            if p.error is not None:
                return p.error
        return Cancelled(f"command {cmd} was stopped ({reason})", result)

    def finish(self, limit: float | None = None, stop: str | None = None) -> Result:
        """Wait for the run to end (or stop it), collect the result; raise its error.

        ``limit`` (a monotonic time) bounds the wait and raises _LimitReached,
        leaving the run going. ``stop`` stops the run first.
        """
        if stop is not None and not self._finished:
            self.interrupt(stop)
        if not self._lock.acquire(timeout=-1 if limit is None else max(0.0, limit - time.monotonic())):
            raise _LimitReached()
        try:
            return self._finish_locked(limit, stop)
        finally:
            self._lock.release()

    def _finish_locked(self, limit: float | None, stop: str | None) -> Result:
        if self._finished:
            return self._return_outcome(check=stop is None)
        try:
            if stop is not None:
                # Asked to stop (close() before EOF, a `with` left by an exception): stop the
                # tree even if every stage has exited meanwhile (a grandchild may hold a pipe),
                # and do not raise ExitError for a status the caller did not wait for.
                raise _Stop(self._stop_reason or stop)
            self._wait_exits(limit)
            self._wait_pumps(limit)
        except _LimitReached:
            raise
        except _Stop as s:
            if self._stop_reason is None:
                self._stop_reason = s.reason
            if s.reason == "timeout":
                last = self.stages[-1]
                emit("proc.timeout", pid=last.pid, argv=list(last.argv), timeout=self.timeout)
            self._abort()
            result = self._finish_collect()
            if s.reason == "stopped":
                self._outcome = result
                return result
            self._outcome = self._error_for(s.reason, result)
            return self._return_outcome()
        except BaseException:
            # The caller's exception (KeyboardInterrupt included): stop everything, then let it go on.
            self._abort()
            # The run's outcome is what the stopped tree left (poll() returns it, a later
            # wait() reports the signal); the caller's exception goes on, once.
            self._outcome = self._finish_collect()
            raise
        result = self._finish_collect()
        for p in self.pumps:
            if p.error is not None:  # a callback failing on the last bytes
                self._outcome = self._error_for("error", result)
                break
        return self._return_outcome()

    def _return_outcome(self, check: bool = True) -> Result:
        out = self._outcome
        if isinstance(out, BaseException):
            if not check and isinstance(getattr(out, "result", None), Result):
                return out.result  # type: ignore[attr-defined,no-any-return]
            raise out
        assert out is not None
        return out._raise_if_checked() if check else out

    def result_unchecked(self) -> Result | None:
        out = self._outcome
        if isinstance(out, Result):
            return out
        r = getattr(out, "result", None)
        return r if isinstance(r, Result) else None
