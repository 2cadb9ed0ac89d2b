"""Cancel: a token that stops runs from any thread (Go's context.Context)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["Cancel"]


class Cancel:
    """A cancellation token, optionally with a deadline.

    Pass it as ``cancel=`` to ``run``/``read``/``lines``/``chunks``/``start``
    (or :func:`procflow.copy`); ``cancel()`` from any thread stops the process
    tree and makes the waiting call raise :class:`~procflow.Cancelled`.

    >>> from procflow import Cancel
    >>> token = Cancel(deadline=30)
    >>> token.cancelled
    False
    >>> token.cancel("user pressed stop")
    >>> token.cancelled, token.reason
    (True, 'user pressed stop')
    """

    def __init__(self, deadline: float | None = None) -> None:
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
                raise TypeError(f"deadline must be a number of seconds, not {type(deadline).__name__}")
            if not deadline > 0 or math.isnan(deadline):
                raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
        self._deadline = None if deadline is None else float(deadline)
        self._created = time.monotonic()
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._reason: object = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def deadline(self) -> float | None:
        """Seconds from creation after which the token cancels itself, or None."""
        return self._deadline

    @property
    def expires_at(self) -> float | None:
        """The deadline on the ``time.monotonic()`` clock, or None."""
        return None if self._deadline is None else self._created + self._deadline

    @property
    def cancelled(self) -> bool:
        """True once ``cancel()`` was called or the deadline has passed."""
        if self._event.is_set():
            return True
        at = self.expires_at
        if at is not None and time.monotonic() >= at:
            self.cancel("deadline exceeded")
            return True
        return False

    @property
    def reason(self) -> object:
        """What ``cancel()`` was given (``"deadline exceeded"`` for a deadline)."""
        return self._reason

    def cancel(self, reason: object = None) -> None:
        """Cancel every run using this token. Idempotent: later calls do nothing."""
        with self._lock:
            if self._event.is_set():
                return
            self._reason = reason if reason is not None else "cancelled"
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled (or the timeout passes); returns ``cancelled``."""
        at = self.expires_at
        if at is not None:
            left = max(0.0, at - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        self._event.wait(timeout)
        return self.cancelled

    def _subscribe(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` once on cancel (at once if already cancelled); returns an unsubscriber."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)

                def unsubscribe() -> None:
                    with self._lock:
                        try:
                            self._callbacks.remove(fn)
                        except ValueError:
                            pass

                return unsubscribe
        fn()
        return lambda: None

    def __repr__(self) -> str:
        state = "cancelled" if self._event.is_set() else "active"
        return f"Cancel({state}, deadline={self._deadline!r})"
