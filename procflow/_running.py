"""Running: the handle of a started run."""

from __future__ import annotations

import signal as _signal
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from ._exec import Execution, _LimitReached
from ._log import emit
from ._result import Result

__all__ = ["Running", "watch_leak"]


def _report_dropped(ex: Execution) -> None:
    if not ex.finished and ex.live_children():
        for pid, argv, _ in ex.live_children():
            emit("supervisor.leak", kind="child", pid=pid, argv=list(argv), reason="handle dropped without wait")


def watch_leak(owner: object, ex: Execution) -> None:
    """Log ``supervisor.leak`` if ``owner`` is collected while its run is still going."""
    weakref.finalize(owner, _report_dropped, ex)


def _background_wait(ex: Execution) -> None:
    try:
        ex.finish()
    except BaseException:  # noqa: BLE001 - kept as the outcome; wait() re-raises it
        pass
    finally:
        ex.supervisor._discard_thread(threading.current_thread())


class Running:
    """A started run. ``wait()`` for its :class:`Result`; use it as a context manager.

    >>> from procflow import Proc
    >>> with Proc("echo", "hi").stdout_capture().start() as running:
    ...     result = running.wait(timeout=10)
    >>> result.stdout
    b'hi\\n'
    """

    def __init__(self, ex: Execution) -> None:
        self._ex = ex
        watch_leak(self, ex)
        if ex.deadline is not None or ex.cancel is not None:
            # Nobody may be waiting when the deadline passes: enforce it anyway.
            t = threading.Thread(
                target=_background_wait, args=(ex,), name=f"procflow-wait[pid={self.pid}]", daemon=True
            )
            ex.supervisor._add_thread(t)
            t.start()

    @property
    def pid(self) -> int:
        """The pid of the (last stage's) child."""
        return self._ex.stages[-1].pid

    @property
    def pids(self) -> tuple[int, ...]:
        """The pids of every stage, in order."""
        return tuple(st.pid for st in self._ex.stages)

    def poll(self) -> Result | None:
        """The result if the run has ended (never raises for a failed exit), else None."""
        ex = self._ex
        if not ex.finished:
            if not ex._lock.acquire(blocking=False):
                return None
            try:
                if ex.finished or not ex.reap_exited():
                    if not ex.finished:
                        return None
                else:
                    try:
                        ex.finish()
                    except Exception:  # noqa: BLE001 - poll reports, wait() raises
                        pass
            finally:
                ex._lock.release()
        return ex.result_unchecked()

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the end and return the :class:`Result`.

        Raises :class:`~procflow.ExitError` on failure unless unchecked. A
        ``timeout`` here raises the builtin :class:`TimeoutError` and leaves
        the process running.
        """
        limit = None if timeout is None else time.monotonic() + timeout
        try:
            return self._ex.finish(limit)
        except _LimitReached:
            raise TimeoutError(f"{self!r} still running after {timeout} s") from None
        except BaseException as e:
            if not self._ex.finished:
                # Interrupted while a background waiter owns the wait: stop the run, then go on.
                self._ex.interrupt("caller")
                try:
                    self._ex.finish()
                except BaseException:  # noqa: BLE001 - the caller's exception wins
                    pass
            raise e

    def terminate(self) -> None:
        """Send SIGTERM to the whole process tree, grandchildren included."""
        self._signal_tree(_signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the whole process tree, grandchildren included."""
        self._signal_tree(_signal.SIGKILL)

    def _signal_tree(self, sig: int) -> None:
        ex = self._ex
        if ex.finished:
            return
        ex._signal_tree(sig, ex._descendants())

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the direct child (each stage's, for a pipeline)."""
        for st in self._ex.stages:
            if st.watch is not None and not st.reaped:
                st.watch.send_signal(sig)

    def __enter__(self) -> Running:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is None:
            self.wait()
            return
        try:
            self._ex.finish(stop="stopped")
        except BaseException:  # noqa: BLE001 - the exception that left the block goes on
            pass

    def __repr__(self) -> str:
        argv = " ".join(self._ex.stages[-1].argv)
        state = "finished" if self._ex.finished else "running"
        return f"<Running pid={self.pid} {argv!r} {state}>"

    def __getstate__(self) -> Any:
        raise TypeError("a Running handle cannot be pickled")
