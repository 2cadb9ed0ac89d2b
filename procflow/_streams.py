"""Streaming a run in the caller's thread: lines(), chunks(), reader(), writer().

The caller reads the last stage's stdout (or writes the first stage's stdin)
directly on a non-blocking pipe; while it waits, the same wait also watches
the children's exits, the run's deadline and its Cancel, so a stream never
hangs on a grandchild that holds the pipe (the wait delay applies) and a
timeout still stops the tree.
"""

from __future__ import annotations

import codecs
import collections
import errno
import io
import itertools
import os
import select
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar, cast

from ._exec import Execution, _LimitReached, _Stop
from ._pumps import READ_CHUNK, split_universal
from ._result import Result
from ._running import watch_leak

__all__ = ["StdoutReader", "StdinWriter", "LineIterator", "ChunkIterator"]


class _StreamBase:
    _ex: Execution

    def _wait_ready(self, fd: int, events: int, held_at: float | None) -> tuple[bool, float | None]:
        """Wait for ``fd``; returns (ready, held_at). Raises the run's error when it must stop."""
        ex = self._ex
        if held_at is None and all(st.exited for st in ex.stages):
            held_at = time.monotonic() + ex.wait_delay
        try:
            ready = ex.wait_event(held_at, extra=[(fd, events)])
        except _LimitReached:
            return False, held_at
        except _Stop as s:
            # Stops the tree and raises Cancelled/ProcTimeout/the pump's error; returns only when
            # another thread closed this stream meanwhile: the caller then finds its fd gone (EOF).
            ex.finish(stop=s.reason)
            return False, held_at
        except BaseException:
            ex.finish(stop="stopped")
            raise
        return bool(ready), held_at

    def _check_running(self) -> bool:
        """On the data path too, not only when waiting: a passed deadline, a Cancel or a pump's
        error stops the run and raises here, even while the child keeps the pipe busy.
        Returns False when the run was stopped without an error (nothing more to move)."""
        ex = self._ex
        reason = ex._interrupt_reason()
        if reason is None:
            return True
        if reason == "timeout" and ex.reap_exited():
            # The children have exited: nothing is left to stop, and what they wrote can still
            # be read (a pipe a grandchild holds open is for the wait, when the pipe goes idle).
            return True
        ex.finish(stop=reason)  # stops the tree; raises Cancelled/ProcTimeout/the pump's error
        return False


class StdoutReader(_StreamBase, io.RawIOBase):
    """The last stage's stdout as a binary stream (``Proc.reader()``).

    ``read(n)``/``read1(n)``/``readinto(b)`` return what has arrived (at most
    ``n`` bytes, at least one unless at EOF), as a raw stream does; ``read()``
    reads to EOF; ``readline()`` and iteration buffer internally, and what
    they buffered is returned first by the other reads.
    """

    def __init__(self, ex: Execution) -> None:
        super().__init__()
        self._ex = ex
        self._eof = False
        self._held_at: float | None = None
        self._pending = bytearray()  # read ahead by readline(), served first by every read
        watch_leak(self, ex)

    @property
    def pid(self) -> int:
        return self._ex.stages[-1].pid

    def readable(self) -> bool:
        return True

    def _read_fd(self, size: int) -> bytes:
        """Up to ``size`` bytes from the pipe as they arrive; b"" at EOF (the run is not finished yet)."""
        if self._eof:
            return b""
        ex = self._ex
        while True:
            fd = ex.out_fd
            if fd is None:
                return b""
            if not self._check_running():
                self._eof = True
                return b""
            try:
                return os.read(fd, size)
            except BlockingIOError:
                ready, self._held_at = self._wait_ready(fd, select.POLLIN, self._held_at)
                if not ready and self._held_at is not None and time.monotonic() >= self._held_at:
                    ex._held_open_expired()
                    return b""

    def _at_eof(self) -> None:
        """Stdout ended: finish the run; raises ExitError when it failed."""
        if not self._eof:
            self._eof = True
            self._ex.finish()

    def _read_raw(self, size: int) -> bytes:
        """Up to ``size`` bytes: what readline() buffered, else what arrives; b"" at EOF."""
        if self.closed:
            raise ValueError("read from a closed reader")
        pending = self._pending
        if pending:
            data = bytes(pending[:size])
            del pending[:size]
            return data
        data = self._read_fd(size)
        if not data:
            self._at_eof()
        return data

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        if not len(mv):
            return 0
        data = self._read_raw(len(mv))
        mv[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed reader")
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        return self._read_raw(size)

    def read1(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        return self._read_raw(READ_CHUNK if size is None or size < 0 else size)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self._read_raw(1 << 20)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def readline(self, size: int | None = -1) -> bytes:
        # RawIOBase.readline reads one byte at a time: buffer instead.
        if self.closed:
            raise ValueError("read from a closed reader")
        buf = self._pending
        limit = -1 if size is None else size
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i >= 0 and (limit < 0 or i < limit):
                line = bytes(buf[: i + 1])
                del buf[: i + 1]
                return line
            if 0 <= limit <= len(buf):
                line = bytes(buf[:limit])
                del buf[:limit]
                return line
            start = len(buf)
            data = self._read_fd(READ_CHUNK)
            if not data:
                line = bytes(buf)
                buf.clear()
                if not line:
                    self._at_eof()
                return line
            buf += data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        """Stop and reap the run if it has not ended (no error for that)."""
        if not self.closed:
            try:
                if not self._ex.finished:
                    self._ex.finish(stop="stopped")
            finally:
                self._pending.clear()
                super().close()

    @property
    def result(self) -> Result | None:
        return self._ex.result_unchecked()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing to report to at collection time
            pass


def _line_batches(reader: StdoutReader, encoding: str, errors: str, current: list[Iterator[str]]) -> Iterator[
    Iterator[str]
]:
    """Decoded, split lines, one iterator per read; ``current[0]`` is the one being consumed.

    It holds the reader, not the LineIterator: no reference cycle, so dropping
    the LineIterator stops the run at once.
    """
    decode = codecs.getincrementaldecoder(encoding)(errors).decode
    read = reader._read_fd
    split = split_universal
    rest = ""
    try:
        while True:
            if reader.closed:
                return
            data = read(READ_CHUNK)
            if not data:
                break
            text = decode(data)
            if rest:
                text = rest + text
            lines, rest = split(text)
            if lines:
                batch = current[0] = iter(lines)
                yield batch
        if reader.closed:
            return
        text = rest + decode(b"", final=True)
        if text.endswith("\r"):
            text = text[:-1]
        if text:
            lines, rest = split(text)
            if rest:
                lines.append(rest)
            batch = current[0] = iter(lines)
            yield batch
        if not reader.closed:
            reader._at_eof()  # ExitError after the last line
    except BaseException:
        # A decode error, the caller's KeyboardInterrupt...: stop the tree before it goes on.
        reader.close()
        raise


class _ReaderHandle:
    """What lines() and chunks() share: the reader they own, and its lifetime rules."""

    _reader: StdoutReader

    @property
    def pid(self) -> int:
        return self._reader.pid

    @property
    def result(self) -> Result | None:
        return self._reader.result

    def close(self) -> None:
        """Stop and reap the run (if still going), close every pipe."""
        self._reader.close()

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing to report to at collection time
            pass


_H = TypeVar("_H", bound=_ReaderHandle)


class LineIterator(_ReaderHandle, itertools.chain[str]):
    """``Proc.lines()``: decoded lines as they arrive, terminators stripped.

    A subclass of ``itertools.chain`` over per-read batches of lines, so that
    the per-line step of a ``for`` loop runs in C (as iterating a file does):
    a Python ``__next__`` per line would cost more than the reading itself.
    """

    _reader: StdoutReader
    _current: list[Iterator[str]]

    def __new__(cls, ex: Execution, encoding: str, errors: str) -> LineIterator:
        reader = StdoutReader(ex)
        current: list[Iterator[str]] = [iter(())]
        self = cast(LineIterator, super().from_iterable(_line_batches(reader, encoding, errors, current)))
        self._reader = reader
        self._current = current
        return self

    def __init__(self, ex: Execution, encoding: str, errors: str) -> None:
        pass  # everything is set up in __new__ (itertools.chain is built there)

    def close(self) -> None:
        """Stop and reap the run (if still going), close every pipe."""
        try:
            self._reader.close()
        finally:
            collections.deque(self._current[0], maxlen=0)  # lines already split are not returned after close


class ChunkIterator(_ReaderHandle):
    """``Proc.chunks()``: raw stdout chunks as they arrive."""

    def __init__(self, ex: Execution) -> None:
        self._reader = StdoutReader(ex)

    def __iter__(self) -> ChunkIterator:
        return self

    def __next__(self) -> bytes:
        data = self._reader.read1(READ_CHUNK)
        if not data:
            raise StopIteration
        return data


class StdinWriter(_StreamBase, io.RawIOBase):
    """The first stage's stdin as a binary stream (``Proc.writer()``).

    ``write()`` blocks while the child is not reading (backpressure) but never
    deadlocks: the child's output goes to its sinks or is drained meanwhile.
    """

    def __init__(self, ex: Execution, encoding: str | None, errors: str) -> None:
        super().__init__()
        self._ex = ex
        self._encoding = encoding
        self._errors = errors
        self._encoder = codecs.getincrementalencoder(encoding)(errors) if encoding else None
        self._held_at: float | None = None
        self.bytes_written = 0
        self.blocked_since: float | None = None
        self.blocked_after = ex.supervisor.blocked_after
        self.reported = False
        self.result: Result | None = None
        watch_leak(self, ex)

    @property
    def pid(self) -> int:
        return self._ex.stages[0].pid

    def writable(self) -> bool:
        return True

    def blocked_fields(self) -> dict[str, Any]:
        st = self._ex.stages[0]
        return {"pid": st.pid, "argv": list(st.argv), "bytes_written": self.bytes_written}

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed writer")
        if isinstance(b, str):
            if self._encoder is None:
                raise TypeError("write() got str: call .text() on the Proc to write text")
            data: Any = self._encoder.encode(b)
        else:
            data = b
        mv = memoryview(data).cast("B")
        total = len(mv)
        ex = self._ex
        from ._supervisor import watchdog

        try:
            while mv:
                fd = ex.in_fd
                if fd is None or ex.stdin_broken:
                    break  # the child stopped reading: what it did not take is dropped, not an error
                if not self._check_running():
                    break
                try:
                    n = os.write(fd, mv[: 1 << 20])
                except BlockingIOError:
                    if self.blocked_since is None:
                        self.blocked_since = time.monotonic()
                        watchdog.blocked(self)
                    ready, self._held_at = self._wait_ready(fd, select.POLLOUT, self._held_at)
                    if not ready and self._held_at is not None and time.monotonic() >= self._held_at:
                        ex.stdin_broken = True
                    continue
                except BrokenPipeError:
                    ex.stdin_broken = True
                    break
                except OSError as e:
                    if e.errno != errno.EPIPE:
                        raise
                    ex.stdin_broken = True
                    break
                mv = mv[n:]
                self.bytes_written += n
                if self.blocked_since is not None:
                    self.blocked_since = None
                    watchdog.unblocked(self)
        finally:
            if self.blocked_since is not None:
                self.blocked_since = None
                watchdog.unblocked(self)
        return total

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Send EOF, wait for the run to end; raises ExitError when it failed."""
        if self.closed:
            return
        ex = self._ex
        try:
            if self._encoder is not None and not ex.stdin_broken and ex.in_fd is not None:
                tail = self._encoder.encode("", final=True)
                if tail:
                    self.write(tail)
            fd, ex.in_fd = ex.in_fd, None
            if fd is not None:
                os.close(fd)
            self.result = ex.finish()
        finally:
            super().close()

    def abort(self) -> None:
        """Stop the run without waiting for it to end by itself."""
        if not self.closed:
            try:
                self._ex.finish(stop="stopped")
            finally:
                super().close()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        try:
            self.abort()
        except Exception:  # noqa: BLE001
            pass
