"""Pump threads: the only places where procflow moves a child's bytes through Python.

A feeder writes Python data to a child's stdin; a drainer reads a child's
stdout or stderr into a capture, callbacks and/or a Python stream. Each pump
owns exactly one parent-side pipe end and closes it in its ``finally``; each
pump belongs to one execution, which joins it. Both poll the execution's stop
pipe, so a pump blocked on a pipe that a grandchild holds open can always be
told to quit.
"""

from __future__ import annotations

import codecs
import errno
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._log import emit
from ._pipes import COPY_CHUNK, set_pipe_size

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ["Signals", "Feeder", "Drainer", "Capture", "LineSplitter", "LimitHit", "set_nonblocking"]

READ_CHUNK = 1 << 16
WRITE_CHUNK = 1 << 20
#: A pump that has moved this much through a default 64 KiB pipe grows the pipe
#: to BIG_PIPE: fewer wake-ups for bulk transfers, while the many small runs keep
#: small pipes (a user's pipe memory is limited, see pipe(7) pipe-user-pages-soft).
GROW_AFTER = 1 << 20
BIG_PIPE = 1 << 20


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class LimitHit(Exception):
    """Raised inside a drainer when a capture passes its max_bytes."""

    def __init__(self, stream: str, max_bytes: int) -> None:
        super().__init__(stream, max_bytes)
        self.stream = stream
        self.max_bytes = max_bytes


class Signals:
    """Two self-pipes shared by one execution and its pumps.

    ``stop`` is fired once and never drained: every pump polling it sees it.
    ``wake`` tells the waiting thread that something happened (a pump ended,
    a pump failed, a cancel). The fds are closed when the execution and every
    pump have released them, so a pump abandoned in a caller's iterator can
    never write into a recycled fd number.
    """

    def __init__(self) -> None:
        # An eventfd is one fd per signal, created non-blocking: half the syscalls of a
        # self-pipe on every run. Elsewhere, a pipe per signal.
        # The stop fd is made on first use: only pump threads poll it, and most runs
        # have none (fewer fds per run matters with hundreds of runs at once).
        self._fds: list[int] = []
        self.wake_r, self.wake_w = self._make()
        self._stop: tuple[int, int] | None = None
        self.stopped = threading.Event()
        self.quiet = False  # set while procflow itself stops the run
        self._lock = threading.Lock()
        self._refs = 1
        self._closed = False

    def _make(self) -> tuple[int, int]:
        if _HAVE_EVENTFD:
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._fds.append(fd)
            return fd, fd
        r, w = os.pipe()
        self._fds += [r, w]
        set_nonblocking(r)
        set_nonblocking(w)
        return r, w

    def _fire(self, fd: int) -> None:
        try:
            if _HAVE_EVENTFD:
                os.eventfd_write(fd, 1)
            else:
                os.write(fd, b"x")
        except BlockingIOError:
            pass  # already full of wake-ups: one is as good as many

    @property
    def stop_r(self) -> int:
        """The fd a pump thread polls to learn that it must stop (made on first use)."""
        with self._lock:
            if self._stop is None:
                self._stop = self._make()
                if self.stopped.is_set():
                    self._fire(self._stop[1])
            return self._stop[0]

    def stop(self) -> None:
        with self._lock:
            if self._closed or self.stopped.is_set():
                return
            self.stopped.set()
            if self._stop is not None:
                self._fire(self._stop[1])

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fire(self.wake_w)

    def drain_wake(self) -> None:
        try:
            if _HAVE_EVENTFD:
                os.eventfd_read(self.wake_r)
            else:
                while os.read(self.wake_r, 4096):
                    pass
        except BlockingIOError:
            pass

    def retain(self) -> None:
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs or self._closed:
                return
            self._closed = True
        for fd in self._fds:
            os.close(fd)


_HAVE_EVENTFD = hasattr(os, "eventfd")


class Capture:
    """Captured bytes kept as chunks and joined once, bounded by max_bytes."""

    __slots__ = ("chunks", "max_bytes", "size", "stream")

    def __init__(self, stream: str, max_bytes: int | None) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.max_bytes = max_bytes
        self.stream = stream

    def add(self, data: bytes) -> None:
        if self.max_bytes is not None and self.size + len(data) > self.max_bytes:
            keep = self.max_bytes - self.size
            if keep > 0:
                self.chunks.append(data[:keep])
                self.size += keep
            raise LimitHit(self.stream, self.max_bytes)
        self.chunks.append(data)
        self.size += len(data)

    def getvalue(self) -> bytes:
        if len(self.chunks) != 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0]


def split_universal(text: str) -> tuple[list[str], str]:
    """Split on \\n, \\r\\n and \\r; returns (complete lines, the unfinished rest).

    A trailing ``\\r`` is kept in the rest: the ``\\n`` of a ``\\r\\n`` may be
    in the next read.
    """
    if "\r" in text:
        hold_cr = text.endswith("\r")
        if hold_cr:
            text = text[:-1]
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        parts = text.split("\n")
        rest = parts.pop()
        if hold_cr:
            rest += "\r"
        return parts, rest
    parts = text.split("\n")
    rest = parts.pop()
    return parts, rest


class LineSplitter:
    """Incrementally decode bytes and hand complete lines to ``fn``."""

    def __init__(self, fn: Callable[[str], object], encoding: str, errors: str) -> None:
        self.fn = fn
        self.decoder = codecs.getincrementaldecoder(encoding)(errors)
        self.rest = ""

    def feed(self, data: bytes) -> None:
        text = self.decoder.decode(data)
        if not text:
            return
        lines, self.rest = split_universal(self.rest + text)
        for line in lines:
            self.fn(line)

    def finish(self) -> None:
        text = self.rest + self.decoder.decode(b"", final=True)
        self.rest = ""
        if text.endswith("\r"):
            text = text[:-1]
        if not text:
            return
        lines, rest = split_universal(text)
        for line in lines:
            self.fn(line)
        if rest:
            self.fn(rest)


class Pump:
    """A named daemon thread that owns one fd and reports how it ended."""

    kind = "pump"

    #: An inline pump has no thread: the thread that waits for the run services it
    #: from its poll loop (``service()``), as communicate() does. Used where that
    #: thread is sure to be waiting (run, lines, reader, writer) and nothing can
    #: block it (no callbacks, no Python sink).
    inline = False
    #: A reactor pump has no thread either: the process-wide service thread
    #: (``procflow-watchdog``) services it (``start()`` captures: nobody may be waiting).
    reactor = False

    def __init__(self, name: str, fd: int, signals: Signals, supervisor: Supervisor) -> None:
        self.fd = fd
        self.signals = signals
        self.supervisor = supervisor
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.name = name

    def start(self) -> None:
        if self.inline:
            return
        if self.reactor:
            SERVICE.add(self)
            return
        _ = self.signals.stop_r  # made now, in the caller: running out of fds fails the spawn, not the pump
        # Only a pump thread holds the signal fds: it may outlive the run (stuck in the
        # caller's iterator), and must never write into a recycled fd number. Inline and
        # reactor pumps are done before the run lets go of them, or they find them closed.
        self.signals.retain()
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.supervisor._add_thread(self.thread)
        try:
            self.thread.start()
        except BaseException:
            self.supervisor._discard_thread(self.thread)
            os.close(self.fd)
            self.done.set()
            self.signals.release()
            raise

    def _main(self) -> None:
        try:
            self.body()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, never lost
            self.error = e
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.done.set()
            self.signals.wake()
            self.signals.release()
            assert self.thread is not None
            self.supervisor._discard_thread(self.thread)

    def body(self) -> None:
        raise NotImplementedError

    def service(self) -> None:
        """Inline pumps: move what can move now without blocking; end at EOF or on error."""
        raise NotImplementedError

    def end_inline(self) -> None:
        """Inline pumps: close the fd and count as done (also when told to stop)."""
        if self.done.is_set():
            return
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.done.set()
        self.signals.wake()  # a no-op once the run has closed its signals

    def join(self, timeout: float) -> None:
        if self.inline:
            self.end_inline()
        elif self.reactor:
            SERVICE.stop(self)  # only the service thread touches the fd: ask, then wait
            self.done.wait(timeout)
        elif self.thread is not None:
            self.thread.join(timeout)

    def wait_fd(self, events: int) -> bool:
        """Wait until our fd is ready; False if the execution told us to stop."""
        p = select.poll()
        stop = self.signals.stop_r
        p.register(self.fd, events)
        p.register(stop, select.POLLIN)
        while True:
            for fd, _ in p.poll():
                return fd != stop


class Feeder(Pump):
    """Writes bytes, str chunks or a Python stream to a child's stdin."""

    kind = "feed"

    def __init__(
        self,
        name: str,
        fd: int,
        signals: Signals,
        supervisor: Supervisor,
        source: Any,
        source_kind: str,
        encoding: str,
        errors: str,
        describe: Callable[[], dict[str, Any]],
        blocked_after: float,
        bytes_written: int = 0,
    ) -> None:
        super().__init__(name, fd, signals, supervisor)
        self.source = source
        self.source_kind = source_kind
        self.encoding = encoding
        self.errors = errors
        self.describe = describe
        self.bytes_written = bytes_written  # what was written before the feeder started
        self.blocked_since: float | None = None
        self.blocked_after = blocked_after
        self.reported = False
        self.broken = False

    def blocked_fields(self) -> dict[str, Any]:
        fields = self.describe()
        fields["bytes_written"] = self.bytes_written
        return fields

    def _chunks(self) -> Iterator[Any]:
        src = self.source
        if self.source_kind == "bytes":
            yield src  # already encoded: str input is encoded when the run is wired
        elif self.source_kind == "iter":
            encoder = None
            for chunk in src:
                if isinstance(chunk, str):
                    if encoder is None:
                        encoder = codecs.getincrementalencoder(self.encoding)(self.errors)
                    chunk = encoder.encode(chunk)
                elif not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(
                        f"an .input() iterable must yield bytes or str chunks, got {type(chunk).__name__}"
                    )
                if chunk:
                    yield chunk
                if self.signals.stopped.is_set():
                    return
        else:  # a Python stream: a procflow.pipe() reader, io.BytesIO...
            while True:
                data = src.read(COPY_CHUNK)
                if not data:
                    return
                if isinstance(data, str):
                    data = data.encode(self.encoding, self.errors)
                yield data

    def body(self) -> None:
        from ._supervisor import watchdog

        grown = GROW_AFTER <= 0
        try:
            for chunk in self._chunks():
                mv = memoryview(chunk).cast("B")
                while mv:
                    if self.signals.stopped.is_set():
                        return
                    try:
                        n = os.write(self.fd, mv[:WRITE_CHUNK])
                    except BlockingIOError:
                        if self.blocked_since is None:
                            self.blocked_since = time.monotonic()
                            watchdog.blocked(self)
                        if not self.wait_fd(select.POLLOUT):
                            return
                        continue
                    mv = mv[n:]
                    self.bytes_written += n
                    if not grown and self.bytes_written >= GROW_AFTER:
                        grown = True
                        set_pipe_size(self.fd, BIG_PIPE)
                    if self.blocked_since is not None:
                        self.blocked_since = None
                        watchdog.unblocked(self)
        except BrokenPipeError:
            # The child exited or closed stdin without reading everything: not an error.
            self.broken = True
            if not self.signals.quiet:
                emit("pipe.broken", stream="stdin", bytes_written=self.bytes_written, **self.describe())
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise
            self.broken = True
        finally:
            if self.blocked_since is not None:
                self.blocked_since = None
                watchdog.unblocked(self)


class Drainer(Pump):
    """Reads a child's stdout or stderr into a capture, callbacks and/or a sink."""

    kind = "drain"

    def __init__(
        self,
        name: str,
        fd: int,
        signals: Signals,
        supervisor: Supervisor,
        capture: Capture | None,
        chunk_callbacks: list[Callable[[bytes], object]],
        line_splitters: list[LineSplitter],
        sink_fd: int | None,
        sink_stream: Any,
        read_size: int = READ_CHUNK,
        inline: bool = False,
        reactor: bool = False,
    ) -> None:
        super().__init__(name, fd, signals, supervisor)
        self.inline = inline
        self.reactor = reactor
        self.capture = capture
        self.chunk_callbacks = chunk_callbacks
        self.line_splitters = line_splitters
        self.sink_fd = sink_fd
        self.sink_stream = sink_stream
        self.read_size = read_size
        self.eof = False
        self.moved = 0

    def service(self) -> None:
        try:
            for _ in range(16):  # then let the other pipes of the run have a turn
                try:
                    data = os.read(self.fd, self.read_size)
                except BlockingIOError:
                    return
                if not data:
                    self._at_eof()
                    break
                self._take(data)
            else:
                return
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, as from a thread pump
            self.error = e
        self.end_inline()

    def body(self) -> None:
        while True:
            try:
                data = os.read(self.fd, self.read_size)
            except BlockingIOError:
                if not self.wait_fd(select.POLLIN):
                    return  # told to stop: a grandchild holds the pipe, or the run was aborted
                continue
            if not data:
                break
            self._take(data)
        self._at_eof()

    def _take(self, data: bytes) -> None:
        if self.moved < GROW_AFTER <= self.moved + len(data) and set_pipe_size(self.fd, BIG_PIPE):
            self.read_size = max(self.read_size, BIG_PIPE)
        self.moved += len(data)
        self._deliver(data)

    def _at_eof(self) -> None:
        self.eof = True
        for splitter in self.line_splitters:
            splitter.finish()
        if self.sink_stream is not None and hasattr(self.sink_stream, "flush"):
            self.sink_stream.flush()

    def _deliver(self, data: bytes) -> None:
        if self.sink_fd is not None:
            _write_all_blocking(self.sink_fd, data)
        if self.sink_stream is not None:
            view = memoryview(data)
            while view:
                n = self.sink_stream.write(view)
                if n is None or n >= len(view):
                    break
                view = view[n:]
        for cb in self.chunk_callbacks:
            cb(data)
        for splitter in self.line_splitters:
            splitter.feed(data)
        if self.capture is not None:
            self.capture.add(data)


def _write_all_blocking(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        try:
            n = os.write(fd, mv)
        except BlockingIOError:
            p = select.poll()
            p.register(fd, select.POLLOUT)
            p.poll()
            continue
        mv = mv[n:]


class ServiceLoop:
    """procflow's one long-lived thread, ``procflow-watchdog``.

    It does two jobs from one ``poll()`` loop: it drains the plain captures of
    every ``start()``-ed run (a thread per captured stream made ``start()``
    pay a thread start per child), and it runs the watchdog that reports
    writers blocked too long (waking when the next one could become overdue).
    While a pump is registered, its fd belongs to this thread alone: only it
    reads and closes it; a run that must stop asks with ``stop()``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pumps: dict[int, Pump] = {}
        self._stopping: set[Pump] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Made at import, so that a leak check that starts later never sees it appear.
        self._wake_r, self._wake_fd = self._make_wake()

    @staticmethod
    def _make_wake() -> tuple[int, int]:
        if _HAVE_EVENTFD:
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            return fd, fd
        r, w = os.pipe()
        set_nonblocking(r)
        set_nonblocking(w)
        return r, w

    def add(self, pump: Pump) -> None:
        with self._lock:
            self._ensure_thread()
            self._pumps[pump.fd] = pump
            self._poke()

    def stop(self, pump: Pump) -> None:
        with self._lock:
            if pump.fd in self._pumps and not pump.done.is_set():
                self._stopping.add(pump)
                self._poke()

    def poke(self) -> None:
        """Wake the loop (starting the thread if needed): the watchdog has news."""
        with self._lock:
            self._ensure_thread()
            self._poke()

    def _poke(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1) if _HAVE_EVENTFD else os.write(self._wake_fd, b"x")
        except BlockingIOError:
            pass

    def _ensure_thread(self) -> None:
        # After a fork the thread is gone in the child: start another (its pumps are the parent's).
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        if self._thread is not None and self._pid != os.getpid():
            self._pumps = {}
            self._stopping = set()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, args=(self._wake_r,), name="procflow-watchdog", daemon=True)
        self._thread.start()

    def _run(self, wake_r: int) -> None:
        from ._supervisor import watchdog

        while True:
            with self._lock:
                pumps = list(self._pumps.values())
                stopping, self._stopping = self._stopping, set()
            for p in stopping:
                p.end_inline()
            wake_at = watchdog.check()
            poller = select.poll()
            poller.register(wake_r, select.POLLIN)
            for p in pumps:
                if not p.done.is_set():
                    poller.register(p.fd, select.POLLIN)
            timeout = None if wake_at is None else max(0, int((wake_at - time.monotonic()) * 1000) + 1)
            ready = {fd for fd, _ in poller.poll(timeout)}
            if wake_r in ready:
                try:
                    os.eventfd_read(wake_r) if _HAVE_EVENTFD else os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            for p in pumps:
                if not p.done.is_set() and p.fd in ready:
                    p.service()
            with self._lock:
                for p in pumps:
                    if p.done.is_set() and self._pumps.get(p.fd) is p:
                        del self._pumps[p.fd]


SERVICE = ServiceLoop()

#: Process-wide service threads: they live as long as the process, not a run.
SERVICE_THREADS = frozenset({"procflow-watchdog"})
