"""Wiring: each stage's stdin/stdout/stderr turned into fds, and the children spawned.

Who closes what: a child's end of every pipe is closed in the parent right
after that child is spawned (``child_ends``); the pipe between two stages is
closed in the parent as soon as both children hold it; a parent-side end goes
to exactly one owner: a pump (closed in its ``finally``), or the caller's stream
(``out_fd``/``in_fd``, closed by the execution when it finishes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import SpawnError
from ._log import emit
from ._pipes import set_pipe_size
from ._pumps import Capture, Drainer, Feeder, LineSplitter, Signals, set_nonblocking
from ._spawn import ExitWatch, defer_sigint, describe_spawn_error, spawn
from ._spec import OutputSpec, fd_of
from ._stage import StageRun, is_tty, open_path

if TYPE_CHECKING:
    from ._spec import StageSpec
    from ._supervisor import Supervisor

__all__ = ["Wiring"]

#: Bytes input up to this size is written into the child's stdin pipe at spawn
#: time (a fresh pipe holds 64 KiB); anything larger gets a feeder thread.
_SMALL_INPUT = 1 << 16


class _PendingPump:
    """A pump of a stage not spawned yet: started once the pid is known, else its fd is closed."""

    def __init__(self, parent_fd: int, make: Callable[[], Feeder | Drainer]) -> None:
        self.parent_fd = parent_fd  # owned here until start() hands it to the pump
        self.make = make
        self.started = False

    def start(self, pumps: list[Feeder | Drainer]) -> None:
        pump = self.make()
        pumps.append(pump)
        self.started = True  # from here the pump owns the fd (its start() closes it on failure)
        pump.start()

    def discard(self) -> None:
        if not self.started:
            os.close(self.parent_fd)


class Wiring:
    """The spawning half of an Execution."""

    mode: str
    stages: list[StageRun]
    specs: list[StageSpec]
    pumps: list[Feeder | Drainer]
    signals: Signals | None
    supervisor: Supervisor
    out_fd: int | None
    in_fd: int | None
    pgid: int | None
    _sink_fds: list[int]

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
            (first_stdin.kind == "inherit" and is_tty(0))
            or (first_stdin.kind == "fd" and is_tty(fd_of(first_stdin.value)))
        )
        pending_pumps: list[_PendingPump] = []
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
                for pending in pending_pumps:
                    pending.start(self.pumps)
                pending_pumps.clear()
        finally:
            if prev_read is not None:
                os.close(prev_read)
            for pending in pending_pumps:  # never started: close their fds
                pending.discard()

    def _pipe_for_pump(self, child_ends: contextlib.ExitStack, parent_reads: bool) -> tuple[int, int]:
        """A pipe whose child end is closed after the spawn; returns (child_fd, parent_fd).

        The parent's end is non-blocking: every user of it waits in poll(), so that a
        stop, a deadline or a child's exit is always noticed.
        """
        r, w = os.pipe()
        child, parent = (w, r) if parent_reads else (r, w)
        child_ends.callback(os.close, child)
        set_nonblocking(parent)
        return child, parent

    def _stdin_target(
        self, st: StageRun, child_ends: contextlib.ExitStack, pending: list[_PendingPump]
    ) -> Any:
        spec = st.spec
        src = spec.stdin
        if self.mode == "in":
            child, parent = self._pipe_for_pump(child_ends, parent_reads=False)
            self.in_fd = parent
            return child
        kind = src.kind
        if kind == "null":
            return subprocess.DEVNULL
        if kind == "inherit":
            return None
        if kind == "path":
            fd = open_path(st, src.value, os.O_RDONLY | os.O_CLOEXEC, "stdin_path")
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
        self, pending: list[_PendingPump], parent_fd: int, make: Callable[[], Feeder | Drainer]
    ) -> None:
        pending.append(_PendingPump(parent_fd, make))

    def _out_target(
        self,
        st: StageRun,
        stream: str,
        out: OutputSpec,
        child_ends: contextlib.ExitStack,
        pending: list[_PendingPump],
    ) -> Any:
        spec = st.spec
        if stream == "stdout" and self.mode == "out":
            child, parent = self._pipe_for_pump(child_ends, parent_reads=True)
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
                fd = open_path(st, out.value, flags, f"{stream}_path")
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
            sink_fd = open_path(st, out.value, flags, f"{stream}_path")
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
        # In run/lines/reader/writer the caller's thread waits on the run: it drains a
        # plain capture itself (no thread to start). Callbacks and Python sinks get a thread.
        plain = not out.callbacks and sink_stream is None and sink_fd is None
        inline = plain and self.mode != "start"
        reactor = plain and self.mode == "start"
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
                reactor=reactor,
            ),
        )
        return child
