"""The supervisor: who owns every child, pump thread and procflow fd.

Each run (an ``_Execution``) belongs to exactly one :class:`Supervisor`: the
one named with ``supervisor=``, else the one whose ``with`` block is active in
this context, else the process-wide default, which cleans up at interpreter
exit. ``shutdown()`` stops what is still alive and reports it as leaked.
"""

from __future__ import annotations

import atexit
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from ._log import emit
from ._spec import check_seconds

if TYPE_CHECKING:
    from ._exec import Execution

__all__ = ["Supervisor", "ChildInfo", "LeakReport", "current_supervisor", "watchdog"]


@dataclass(frozen=True)
class ChildInfo:
    """One live child as a supervisor sees it (argv redacted)."""

    pid: int
    argv: tuple[str, ...]
    age: float  # seconds since spawn
    rss: int | None  # bytes, from psutil (None if it could not be read)
    cpu: float | None  # user+system seconds, from psutil


@dataclass(frozen=True)
class LeakReport:
    """What ``shutdown()`` found still alive or open."""

    children: tuple[ChildInfo, ...] = ()
    fds: tuple[int, ...] = ()
    threads: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.children or self.fds or self.threads)

    def describe(self) -> str:
        parts = []
        for c in self.children:
            parts.append(f"child pid={c.pid} argv={list(c.argv)}")
        for fd in self.fds:
            parts.append(f"fd {fd}")
        for t in self.threads:
            parts.append(f"thread {t}")
        return "; ".join(parts) if parts else "nothing leaked"


def child_info(pid: int, argv: tuple[str, ...], started: float) -> ChildInfo:
    rss: int | None = None
    cpu: float | None = None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            rss = p.memory_info().rss
            t = p.cpu_times()
            cpu = t.user + t.system
    except (psutil.Error, OSError):
        pass
    return ChildInfo(pid=pid, argv=argv, age=time.monotonic() - started, rss=rss, cpu=cpu)


class Supervisor:
    """Tracks children, pump threads and pipes; stops and reports leftovers.

    >>> from procflow import Proc, Supervisor
    >>> with Supervisor() as sup:
    ...     running = Proc("sleep", "30").start()
    ...     [c.argv for c in sup.children()]
    [('sleep', '30')]
    >>> running.poll().returncode  # the supervisor stopped it on exit
    -15
    """

    def __init__(self, blocked_after: float = 5.0, kill_grace: float = 2.0) -> None:
        self.blocked_after = check_seconds(blocked_after, "blocked_after")
        self.kill_grace = check_seconds(kill_grace, "kill_grace", allow_zero=True)
        self._lock = threading.Lock()
        self._executions: dict[int, Execution] = {}
        self._fds: dict[int, Any] = {}  # fd -> the os_pipe() file object that owns it
        self._threads: set[threading.Thread] = set()
        self._tokens: list[contextvars.Token[Supervisor | None]] = []

    # -- registration (called by the engine) ---------------------------------
    def _add(self, ex: Execution) -> None:
        with self._lock:
            self._executions[id(ex)] = ex

    def _discard(self, ex: Execution) -> None:
        with self._lock:
            self._executions.pop(id(ex), None)

    def _add_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads.add(t)

    def _discard_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(t)

    def _add_fd(self, fd: int, owner: Any) -> None:
        with self._lock:
            self._fds[fd] = owner

    def _discard_fd(self, fd: int) -> None:
        with self._lock:
            self._fds.pop(fd, None)

    # -- public ---------------------------------------------------------------
    def children(self) -> list[ChildInfo]:
        """The live children of every run this supervisor owns."""
        with self._lock:
            execs = list(self._executions.values())
        out: list[ChildInfo] = []
        for ex in execs:
            for pid, argv, started in ex.live_children():
                out.append(child_info(pid, argv, started))
        return out

    def shutdown(self, grace: float | None = None) -> LeakReport:
        """Stop every live child tree, close procflow's fds, join pump threads.

        Returns what was left behind, each item also logged as
        ``supervisor.leak``.
        """
        g = self.kill_grace if grace is None else check_seconds(grace, "grace", allow_zero=True)
        with self._lock:
            execs = list(self._executions.values())
        children: list[ChildInfo] = []
        for ex in execs:
            for pid, argv, started in ex.live_children():
                info = child_info(pid, argv, started)
                children.append(info)
                emit("supervisor.leak", kind="child", pid=pid, argv=list(argv))
            ex.abandon(g)
            self._discard(ex)
        with self._lock:
            fds = dict(self._fds)
            self._fds.clear()
        for fd, owner in fds.items():
            emit("supervisor.leak", kind="fd", fd=fd)
            try:
                owner.close()
            except OSError:
                pass
        with self._lock:
            threads = list(self._threads)
        leaked_threads = []
        deadline = time.monotonic() + max(g, 0.5)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                leaked_threads.append(t.name)
                emit("supervisor.leak", kind="thread", thread=t.name)
            else:
                self._discard_thread(t)
        return LeakReport(tuple(children), tuple(sorted(fds)), tuple(leaked_threads))

    def __enter__(self) -> Supervisor:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        token = self._tokens.pop()
        try:
            _current.reset(token)
        except ValueError:  # exited in another context: restore by hand
            _current.set(None)
        self.shutdown()

    def __repr__(self) -> str:
        return f"Supervisor(blocked_after={self.blocked_after}, kill_grace={self.kill_grace})"


_current: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar(
    "procflow_supervisor", default=None
)
_default = Supervisor()


def current_supervisor() -> Supervisor:
    """The supervisor of this context: the innermost ``with``, else the default."""
    return _current.get() or _default


def default_supervisor() -> Supervisor:
    return _default


@atexit.register
def _shutdown_default() -> None:
    _default.shutdown()


# -- the watchdog --------------------------------------------------------------
class BlockedWriter(Protocol):
    blocked_since: float | None
    blocked_after: float
    reported: bool

    def blocked_fields(self) -> dict[str, Any]: ...


@dataclass
class _Watchdog:
    """Reports writers blocked too long.

    It runs on procflow's one long-lived service thread, ``procflow-watchdog``
    (``_pumps.ServiceLoop``), which also drains the plain captures of started
    runs: ``check()`` is called from its poll loop, which sleeps until the next
    writer could become overdue.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    writers: set[Any] = field(default_factory=set)

    def blocked(self, w: BlockedWriter) -> None:
        from ._pumps import SERVICE

        with self.lock:
            self.writers.add(w)
        SERVICE.poke()

    def unblocked(self, w: BlockedWriter) -> None:
        with self.lock:
            self.writers.discard(w)
            reported, w.reported = w.reported, False
        if reported:
            emit("pipe.writer_unblocked", **w.blocked_fields())

    def check(self) -> float | None:
        """Log the writers now overdue; returns when to look again (monotonic), or None."""
        due: list[Any] = []
        with self.lock:
            now = time.monotonic()
            wake_at: float | None = None
            for w in self.writers:
                since = w.blocked_since
                if since is None or w.reported:
                    continue
                at = since + w.blocked_after
                if at <= now:
                    w.reported = True
                    due.append(w)
                elif wake_at is None or at < wake_at:
                    wake_at = at
        for w in due:
            fields = w.blocked_fields()
            since = w.blocked_since
            fields["blocked_for"] = round(time.monotonic() - since, 3) if since is not None else 0.0
            emit("pipe.writer_blocked", **fields)
        return wake_at


watchdog = _Watchdog()
