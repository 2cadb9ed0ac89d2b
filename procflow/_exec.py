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

import contextlib
import errno
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from ._cancel import Cancel
from ._errors import Cancelled, OutputLimitExceeded, ProcTimeout, SpawnError
from ._log import emit
from ._pipes import set_pipe_size
from ._pumps import Capture, Drainer, Feeder, LimitHit, LineSplitter, Signals, set_nonblocking
from ._result import Result, stage_failed
from ._spawn import ExitWatch, check_cwd, defer_sigint, describe_spawn_error, spawn
from ._spec import OutputSpec, StageSpec, fd_of
from ._supervisor import Supervisor

__all__ = ["Execution", "Mode"]

Mode = str  # "run" | "start" | "out" (caller reads stdout) | "in" (caller writes stdin)

#: Bytes input up to this size is written into the child's stdin pipe at spawn
#: time (a fresh pipe holds 64 KiB); anything larger gets a feeder thread.
_SMALL_INPUT = 1 << 16

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


class StageRun:
    """One child: its spec, pid, exit watch and, once reaped, its status."""

    def __init__(self, index: int, spec: StageSpec) -> None:
        self.index = index
        self.spec = spec
        self.argv = spec.display_argv
        self.pid = 0
        self.watch: ExitWatch | None = None
        self.started = 0.0
        self.ended: float | None = None
        self.returncode: int | None = None
        self.cpu_time = 0.0
        self.max_rss = 0
        self.out_capture: Capture | None = None
        self.err_capture: Capture | None = None

    @property
    def reaped(self) -> bool:
        return self.returncode is not None

    @property
    def exited(self) -> bool:
        """Exited, reaped or not. procflow reaps only when the run is finished: until
        then the zombie keeps the pid and the process group id from being reused,
        so the group of a run whose leader exited can still be signalled safely."""
        return self.ended is not None

    def check_exited(self) -> bool:
        if self.ended is None and self.watch is not None and self.watch.exited():
            self.ended = time.monotonic()
        return self.ended is not None

    def reap(self, block: bool) -> bool:
        """Collect the exit status with wait4; True once reaped."""
        if self.returncode is not None:
            return True
        while True:
            try:
                pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
            except InterruptedError:
                continue
            except ChildProcessError:
                # Someone else reaped it (a SIGCHLD handler set to SIG_IGN, os.wait()):
                # the status is lost.
                pid, status, ru = self.pid, 255 << 8, None
            break
        if pid == 0:
            return False
        if self.ended is None:
            self.ended = time.monotonic()
        self.returncode = os.waitstatus_to_exitcode(status)
        if ru is not None:
            self.cpu_time = ru.ru_utime + ru.ru_stime
            # ru_maxrss is KiB on Linux, bytes on macOS.
            self.max_rss = ru.ru_maxrss if os.uname().sysname == "Darwin" else ru.ru_maxrss * 1024
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        emit(
            "proc.exit",
            pid=self.pid,
            argv=list(self.argv),
            returncode=self.returncode,
            duration=round(self.ended - self.started, 6),
            cpu_time=round(self.cpu_time, 6),
            max_rss=self.max_rss,
        )
        return True


def _open_path(st: StageRun, path: str | bytes, flags: int, method: str) -> int:
    """Open a stdin/stdout/stderr path; a failure is a SpawnError naming the path."""
    try:
        return os.open(path, flags, 0o666)
    except OSError as e:
        shown = os.fsdecode(path)
        err = SpawnError(f"cannot open {shown!r} for {method}(): {e.strerror}", st.argv, e.errno)
        raise err from e


def _is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class Execution:
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
        self._caller_exc: BaseException | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._lock = threading.RLock()  # one waiter at a time
        self._outcome: Result | BaseException | None = None
        self._finished = False
        self._aborted = False
        self._held_open: list[int] = []
        self.stdin_broken = False
        self.background: threading.Thread | None = None

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
        try:
            self._spawn_all()
        except BaseException as e:
            self._abort()
            self._close_all()
            exhausted = self._fd_exhausted(e) if isinstance(e, OSError) and not isinstance(e, SpawnError) else None
            if exhausted is None:
                raise
            raise exhausted from e
        self.supervisor._add(self)
        if self.cancel is not None:
            signals = self.signals

            def on_cancel() -> None:
                signals.wake()

            self._unsubscribe = self.cancel._subscribe(on_cancel)

    def _fd_exhausted(self, e: OSError) -> SpawnError | None:
        """Running out of fds while wiring a stage (a pipe, a pidfd) is a SpawnError naming it."""
        if e.errno not in (errno.EMFILE, errno.ENFILE):
            return None
        st = next((st for st in self.stages if not st.pid), self.stages[-1])
        return describe_spawn_error(e, st.spec, None)

    def _spawn_all(self) -> None:
        assert self.signals is not None
        n = len(self.stages)
        first_stdin = self.specs[0].stdin
        in_terminal = self.mode != "in" and (
            (first_stdin.kind == "inherit" and _is_tty(0))
            or (first_stdin.kind == "fd" and _is_tty(fd_of(first_stdin.value)))
        )
        pending_pumps: list[Callable[[], None]] = []
        prev_read: int | None = None  # read end of the pipe into the next stage
        try:
            for i, st in enumerate(self.stages):
                spec = st.spec
                env = spec.build_env()
                with contextlib.ExitStack() as child_ends:  # closed in the parent right after spawn
                    if i > 0:
                        assert prev_read is not None
                        stdin: Any = prev_read
                        child_ends.callback(os.close, prev_read)
                        prev_read = None
                    else:
                        stdin = self._stdin_target(st, child_ends, pending_pumps)
                    if i < n - 1:
                        r, w = os.pipe()
                        prev_read = r
                        child_ends.callback(os.close, w)
                        if spec.pipe_size or self.specs[i + 1].pipe_size:
                            set_pipe_size(w, spec.pipe_size or self.specs[i + 1].pipe_size or 0)
                        stdout: Any = w
                    else:
                        stdout = None
                    stderr = self._out_target(st, "stderr", spec.stderr, child_ends, pending_pumps)
                    if i == n - 1:
                        stdout = self._out_target(st, "stdout", spec.stdout, child_ends, pending_pumps)
                    if spec.stdout.kind == "redirect" and i == n - 1:
                        # stdout_to_stderr: stdout goes wherever stderr goes.
                        stdout = 2 if stderr is None else stderr
                    if spec.stderr.kind == "redirect":
                        stderr = subprocess.STDOUT
                    if in_terminal:
                        group: int | None = None
                    elif self.pgid is None:
                        group = 0
                    else:
                        group = self.pgid
                    st.started = time.monotonic()
                    with defer_sigint():  # Ctrl-C lands after the pid is recorded, never before
                        st.pid = spawn(spec, stdin, stdout, stderr, group, env)
                        st.watch = ExitWatch(st.pid)
                    if group == 0:
                        self.pgid = st.pid
                emit("proc.spawn", pid=st.pid, argv=list(st.argv))
                # The pumps of this stage can start now that its pid is known.
                for start_pump in pending_pumps:
                    start_pump()
                pending_pumps.clear()
        finally:
            if prev_read is not None:
                os.close(prev_read)
            for start_pump in pending_pumps:  # never started: close their fds
                getattr(start_pump, "discard", lambda: None)()

    def _pipe_for_pump(self, child_ends: contextlib.ExitStack, parent_reads: bool) -> tuple[int, int]:
        """A pipe whose child end is closed after the spawn; returns (child_fd, parent_fd)."""
        r, w = os.pipe()
        child, parent = (w, r) if parent_reads else (r, w)
        child_ends.callback(os.close, child)
        return child, parent

    def _stdin_target(
        self, st: StageRun, child_ends: contextlib.ExitStack, pending: list[Callable[[], None]]
    ) -> Any:
        spec = st.spec
        src = spec.stdin
        if self.mode == "in":
            child, parent = self._pipe_for_pump(child_ends, parent_reads=False)
            set_nonblocking(parent)
            self.in_fd = parent
            return child
        kind = src.kind
        if kind == "null":
            return subprocess.DEVNULL
        if kind == "inherit":
            return None
        if kind == "path":
            fd = _open_path(st, src.value, os.O_RDONLY | os.O_CLOEXEC, "stdin_path")
            child_ends.callback(os.close, fd)
            return fd
        if kind == "fd":
            return fd_of(src.value)
        # Python data: a pipe and a feeder thread.
        if kind == "iter":
            source: Any = src.value.take()
            source_kind = "iter"
        elif kind == "reiter":
            source, source_kind = iter(src.value), "iter"
        elif kind == "stream":
            source, source_kind = src.value, "stream"
        else:
            source, source_kind = src.value, "bytes"
        child, parent = self._pipe_for_pump(child_ends, parent_reads=False)
        set_nonblocking(parent)
        if source_kind == "bytes":
            data = source.encode(spec.encoding or "utf-8", spec.errors if spec.encoding else "strict") \
                if isinstance(source, str) else source
            # Input that fits in the empty pipe is written now: no feeder thread at all.
            written = os.write(parent, data[:_SMALL_INPUT]) if data else 0
            if written == len(data):
                os.close(parent)
                return child
            source = memoryview(data)[written:]
            already = written
        else:
            already = 0
        self._add_pump_starter(
            pending,
            parent,
            lambda: Feeder(
                f"procflow-feed[pid={st.pid}]",
                parent,
                self._signals(),
                self.supervisor,
                source,
                source_kind,
                spec.encoding or "utf-8",
                spec.errors if spec.encoding else "strict",
                lambda: {"pid": st.pid, "argv": list(st.argv)},
                self.supervisor.blocked_after,
                already,
            ),
        )
        return child

    def _signals(self) -> Signals:
        assert self.signals is not None
        return self.signals

    def _add_pump_starter(
        self, pending: list[Callable[[], None]], parent_fd: int, make: Callable[[], Feeder | Drainer]
    ) -> None:
        state = {"started": False}

        def start_pump() -> None:
            pump = make()
            self.pumps.append(pump)
            state["started"] = True
            pump.start()

        def discard() -> None:
            if not state["started"]:
                os.close(parent_fd)

        start_pump.discard = discard  # type: ignore[attr-defined]
        pending.append(start_pump)

    def _out_target(
        self,
        st: StageRun,
        stream: str,
        out: OutputSpec,
        child_ends: contextlib.ExitStack,
        pending: list[Callable[[], None]],
    ) -> Any:
        spec = st.spec
        if stream == "stdout" and self.mode == "out":
            child, parent = self._pipe_for_pump(child_ends, parent_reads=True)
            set_nonblocking(parent)
            self.out_fd = parent
            return child
        kind = out.kind
        if kind == "redirect":
            return None  # resolved by the caller
        if kind == "fd" and callable(getattr(out.value, "flush", None)):
            # What the caller wrote to its buffered file before this run must land before the child's bytes.
            out.value.flush()
        if not out.needs_pump:
            if kind == "inherit":
                return None
            if kind in ("null", "none"):
                return subprocess.DEVNULL
            if kind == "path":
                flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if out.append else os.O_TRUNC)
                if stream == "stderr" and len(self.stages) > 1:
                    flags |= os.O_APPEND  # stages share the file: the first truncates, none overwrites another
                fd = _open_path(st, out.value, flags, f"{stream}_path")
                child_ends.callback(os.close, fd)
                return fd
            if kind == "fd":
                return fd_of(out.value)
            raise AssertionError(kind)
        # Through Python: capture, callbacks, a Python stream, or a tee of those with a file.
        capture = Capture(stream, out.max_bytes) if out.captures else None
        if stream == "stdout":
            st.out_capture = capture
        else:
            st.err_capture = capture
        sink_fd: int | None = None
        sink_stream: Any = None
        if kind == "path":
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if out.append else os.O_TRUNC)
            if stream == "stderr" and len(self.stages) > 1:
                flags |= os.O_APPEND  # stages share the file: the first truncates, none overwrites another
            sink_fd = _open_path(st, out.value, flags, f"{stream}_path")
            self._sink_fds.append(sink_fd)
        elif kind == "fd":
            sink_fd = fd_of(out.value)
        elif kind == "stream":
            sink_stream = out.value
        elif kind == "inherit" and not out.callbacks:
            sink_fd = 1 if stream == "stdout" else 2
        encoding = spec.encoding or "utf-8"
        errors = spec.errors if spec.encoding else "replace"
        chunk_cbs = [fn for fn, lines in out.callbacks if not lines]
        splitters = [LineSplitter(fn, encoding, errors) for fn, lines in out.callbacks if lines]
        child, parent = self._pipe_for_pump(child_ends, parent_reads=True)
        set_nonblocking(parent)
        # In run/lines/reader/writer the caller's thread waits on the run: it drains a
        # plain capture itself (no thread to start). Callbacks and Python sinks get a thread.
        inline = self.mode != "start" and not out.callbacks and sink_stream is None and sink_fd is None
        self._add_pump_starter(
            pending,
            parent,
            lambda: Drainer(
                f"procflow-drain[pid={st.pid},{stream}]",
                parent,
                self._signals(),
                self.supervisor,
                capture,
                chunk_cbs,
                splitters,
                sink_fd,
                sink_stream,
                inline=inline,
            ),
        )
        return child

    _sink_fds: list[int]

    def __new__(cls, *args: Any, **kwargs: Any) -> Execution:
        self = super().__new__(cls)
        self._sink_fds = []  # path sinks of tees, opened by us, closed in _close_all
        return self

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

    def held_open_pids(self, fds: list[int]) -> list[int]:
        """The pids (other than ours) holding the other end of these pipes."""
        inodes = set()
        for fd in fds:
            try:
                inodes.add(os.fstat(fd).st_ino)
            except OSError:
                pass
        if not inodes:
            return []
        wanted = {f"pipe:[{i}]" for i in inodes}
        me = os.getpid()
        holders = []
        try:
            pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        except OSError:
            return []
        for pid in pids:
            if pid == me:
                continue
            try:
                with os.scandir(f"/proc/{pid}/fd") as entries:  # closed on the early break too
                    for entry in entries:
                        try:
                            if os.readlink(entry.path) in wanted:
                                holders.append(pid)
                                break
                        except OSError:
                            continue
            except OSError:
                continue
        return sorted(holders)

    def _held_open_expired(self) -> None:
        """The children exited but their pipes are still open after the wait delay."""
        fds = [p.fd for p in self.pumps if not p.done.is_set()]
        if self.out_fd is not None:
            fds.append(self.out_fd)
        pids = self.held_open_pids(fds)
        self._held_open = pids
        last = self.stages[-1]
        emit("pipe.held_open", pid=last.pid, argv=list(last.argv), holders=pids, wait_delay=self.wait_delay)
        self._stop_pumps()

    def _stop_pumps(self) -> None:
        self._signals().stop()
        deadline = time.monotonic() + _JOIN_AFTER_STOP
        for p in self.pumps:
            p.join(max(0.0, deadline - time.monotonic()))

    # -------------------------------------------------------------- stopping
    def _descendants(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for st in self.stages:
            if st.exited or not st.pid:
                continue
            try:
                procs.extend(psutil.Process(st.pid).children(recursive=True))
            except psutil.Error:
                pass
        return procs

    def _signal_tree(self, sig: int, procs: list[psutil.Process]) -> None:
        live = [st for st in self.stages if st.pid and not st.reaped]
        # The group can be signalled safely while one of our stages (its leader or
        # a member, zombie or not) is unreaped: its number cannot be reused then.
        if self.pgid is not None and live:
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for st in live:
            if st.watch is not None:
                st.watch.send_signal(sig)
            else:
                # Interrupted between the spawn and its exit watch: the pid is
                # unreaped, so it cannot have been recycled; signal it directly.
                try:
                    os.kill(st.pid, sig)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.send_signal(sig)  # psutil refuses a pid that was reused
            except (psutil.Error, OSError):
                pass

    def kill_tree(self, grace: float, log: bool = True) -> None:
        """SIGTERM the whole tree, SIGKILL what is left after ``grace``, reap the stages.

        The tree is every unexited stage, its descendants (found with psutil:
        children that called setsid have left the group) and whatever is still
        in the run's process group (orphans of a stage that already exited).
        ``log=False`` when the caller asked for the stop (leaving a ``lines()``
        loop early is not worth a warning).
        """
        # The event names the last stage that was spawned (a later one may have failed to start).
        last = next((st for st in reversed(self.stages) if st.pid), self.stages[-1])
        procs = self._tree_snapshot()
        if procs or any(st.pid and not st.exited for st in self.stages):
            if log:
                emit("proc.kill", pid=last.pid, argv=list(last.argv), signal="SIGTERM")
            self._signal_tree(signal.SIGTERM, procs)
            end = time.monotonic() + grace
            while True:
                self.reap_exited()
                live = [st for st in self.stages if st.pid and not st.exited and st.watch is not None]
                left = end - time.monotonic()
                if not live or left <= 0:
                    break
                self._poll([(st.watch.fd, select.POLLIN) for st in live if st.watch], left)
            procs = _wait_gone(procs, end)
            if procs or any(st.pid and not st.exited for st in self.stages):
                if log:
                    emit("proc.kill", pid=last.pid, argv=list(last.argv), signal="SIGKILL")
                self._signal_tree(signal.SIGKILL, procs)
        for st in self.stages:
            if st.pid and not st.reaped:
                st.reap(block=True)

    def _tree_snapshot(self) -> list[psutil.Process]:
        """Descendants of the live stages, plus the other members of our process group."""
        procs = {p.pid: p for p in self._descendants()}
        ours = {st.pid for st in self.stages}
        # Whoever holds our pipes came from the tree, even a grandchild that called
        # setsid after its parent exited. Worth a /proc scan when the run is being
        # stopped by a timeout, a cancel or an error, not when the caller closes early.
        if self._stop_reason not in (None, "stopped"):
            fds = [p.fd for p in self.pumps if not p.done.is_set()]
            fds += [fd for fd in (self.out_fd, self.in_fd) if fd is not None]
            for pid in self.held_open_pids(fds):
                if pid not in ours and pid not in procs:
                    try:
                        procs[pid] = psutil.Process(pid)
                    except psutil.Error:
                        pass
        # The group id is safe to look for while one of our stages is unreaped.
        if self.pgid is not None and any(st.pid and not st.reaped for st in self.stages):
            for pid in psutil.pids():
                if pid in ours or pid in procs:
                    continue
                try:
                    if os.getpgid(pid) == self.pgid:
                        procs[pid] = psutil.Process(pid)
                except (OSError, psutil.Error):
                    continue
        return list(procs.values())

    def _abort(self) -> None:
        """Stop the tree, reap it, stop the pumps. Safe to call more than once."""
        if self._aborted:
            return
        self._aborted = True
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
            self.kill_grace = grace
            self._stop_reason = self._stop_reason or "shutdown"
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
        last = self.stages[-1]
        cmd = " ".join(last.argv)
        if reason == "timeout":
            return ProcTimeout(f"command {cmd!r} timed out after {self.timeout} s; its process tree was stopped",
                               result)
        if reason == "cancel":
            why = self.cancel.reason if self.cancel is not None else None
            return Cancelled(f"command {cmd!r} was cancelled ({why})", result)
        if reason == "shutdown":
            return Cancelled(f"command {cmd!r} was stopped by its supervisor's shutdown", result)
        for p in self.pumps:
            if isinstance(p.error, LimitHit):
                err = OutputLimitExceeded(
                    f"command {cmd!r}: captured {p.error.stream} passed max_bytes={p.error.max_bytes}; "
                    "the process tree was stopped",
                    result,
                )
                err.stream = p.error.stream
                return err
        for p in self.pumps:
            if p.error is not None:
                return p.error
        if self._caller_exc is not None:
            return self._caller_exc
        return Cancelled(f"command {cmd!r} was stopped ({reason})", result)

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
        if True:
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
            except BaseException as e:
                # The caller's exception (KeyboardInterrupt included): stop everything, then let it go on.
                self._caller_exc = e
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


def _wait_gone(procs: list[psutil.Process], end: float) -> list[psutil.Process]:
    """Wait until ``end`` for processes that are not our children to die; returns the living.

    They cannot be waited for (a pidfd of a non-child would do, but psutil's
    create-time check is what guards against reuse here), so this polls with a
    growing interval; it runs only while stopping a tree. A zombie counts as
    dead: its parent, not us, has to reap it.
    """
    delay = 0.005
    while True:
        procs = [p for p in procs if _alive(p)]
        left = end - time.monotonic()
        if not procs or left <= 0:
            return procs
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


