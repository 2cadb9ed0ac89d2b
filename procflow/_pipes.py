"""Pipes: an in-process pipe between threads, kernel pipes as files, and copy().

``pipe()`` is Go's ``io.Pipe`` with a bounded buffer; ``os_pipe()`` is
``os.Pipe``; ``copy()`` is ``io.Copy``, zero-copy when the kernel allows it.
The pump threads move bytes with the same primitives.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import stat
import threading
import time
from collections import deque
from typing import Any

from ._cancel import Cancel

__all__ = ["pipe", "os_pipe", "copy", "PipeReader", "PipeWriter", "set_pipe_size", "max_pipe_size"]

COPY_CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def max_pipe_size() -> int | None:
    """The largest pipe an unprivileged process may ask for (Linux), else None."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def set_pipe_size(fd: int, size: int) -> int | None:
    """Best-effort ``F_SETPIPE_SZ``; returns the new size or None where unsupported."""
    if not hasattr(fcntl, "F_SETPIPE_SZ") and os.uname().sysname != "Linux":
        return None
    top = max_pipe_size()
    if top is not None:
        size = min(size, top)
    try:
        return int(fcntl.fcntl(fd, F_SETPIPE_SZ, size))
    except OSError:
        return None  # over the per-user pipe budget, or not a pipe: keep the default


# -- the in-process pipe -------------------------------------------------------
class _PipeState:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf: deque[bytes] = deque()
        self.size = 0
        self.cond = threading.Condition()
        self.writer_closed = False
        self.error: BaseException | None = None
        self.reader_closed = False
        # Held for a whole write(): concurrent writes are never interleaved (as Go's io.Pipe).
        self.write_lock = threading.Lock()


class PipeReader(io.RawIOBase):
    """The reading end of :func:`pipe`; a binary file-like object."""

    def __init__(self, state: _PipeState) -> None:
        super().__init__()
        self._s = state

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        data = self._take(len(mv))
        mv[: len(data)] = data
        return len(data)

    def read1(self, size: int = -1) -> bytes:
        return self._take(COPY_CHUNK if size is None or size < 0 else size)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return self._take(size)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self._take(COPY_CHUNK)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def _take(self, size: int) -> bytes:
        if self.closed:
            raise ValueError("read from a closed pipe reader")
        if size == 0:
            return b""
        s = self._s
        with s.cond:
            while not s.buf:
                if s.writer_closed:
                    if s.error is not None:
                        raise s.error
                    return b""
                s.cond.wait()
            out = []
            got = 0
            while s.buf and got < size:
                head = s.buf[0]
                want = size - got
                if len(head) <= want:
                    out.append(s.buf.popleft())
                    got += len(head)
                else:
                    out.append(head[:want])
                    s.buf[0] = head[want:]
                    got += want
            s.size -= got
            s.cond.notify_all()
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        if not self.closed:
            s = self._s
            with s.cond:
                s.reader_closed = True
                s.buf.clear()
                s.size = 0
                s.cond.notify_all()
        super().close()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a procflow.pipe() end has no file descriptor")


class PipeWriter(io.RawIOBase):
    """The writing end of :func:`pipe`: ``write()`` blocks while the buffer is full."""

    def __init__(self, state: _PipeState, blocked_after: float) -> None:
        super().__init__()
        self._s = state
        self.blocked_since: float | None = None
        self.blocked_after = blocked_after
        self.reported = False
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def blocked_fields(self) -> dict[str, Any]:
        return {"pipe": "procflow.pipe", "bytes_written": self.bytes_written}

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed pipe writer")
        from ._supervisor import watchdog

        data = bytes(b)
        s = self._s
        total = len(data)
        off = 0
        with s.write_lock, s.cond:
            while off < total:
                if s.reader_closed:
                    if self.blocked_since is not None:
                        # Not blocked any more: the watchdog must not report (or keep) this writer.
                        self.blocked_since = None
                        watchdog.unblocked(self)
                    raise BrokenPipeError(errno.EPIPE, "the pipe's reader was closed")
                room = s.capacity - s.size
                if room <= 0:
                    if self.blocked_since is None:
                        self.blocked_since = time.monotonic()
                        watchdog.blocked(self)
                    s.cond.wait()
                    continue
                piece = data[off : off + room] if (off or room < total) else data
                s.buf.append(piece)
                s.size += len(piece)
                off += len(piece)
                self.bytes_written += len(piece)
                s.cond.notify_all()
                if self.blocked_since is not None:
                    self.blocked_since = None
                    s.cond.release()
                    try:
                        watchdog.unblocked(self)
                    finally:
                        s.cond.acquire()
        return total

    def close(self, error: BaseException | None = None) -> None:
        """Give the reader EOF after the buffered data (or ``error`` instead of EOF)."""
        if not self.closed:
            s = self._s
            with s.cond:
                s.writer_closed = True
                s.error = error
                s.cond.notify_all()
            if self.blocked_since is not None:
                from ._supervisor import watchdog

                self.blocked_since = None
                watchdog.unblocked(self)
        super().close()

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a procflow.pipe() end has no file descriptor")


def pipe(capacity: int = 65536) -> tuple[PipeReader, PipeWriter]:
    """An in-process pipe between threads, the analogue of Go's ``io.Pipe``.

    >>> import threading
    >>> from procflow import pipe
    >>> r, w = pipe()
    >>> t = threading.Thread(target=lambda: (w.write(b"hello"), w.close()))
    >>> t.start(); data = r.read(); t.join(); r.close()
    >>> data
    b'hello'
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity <= 0:
        raise ValueError(f"capacity must be > 0, got {capacity}")
    from ._supervisor import current_supervisor

    state = _PipeState(capacity)
    return PipeReader(state), PipeWriter(state, current_supervisor().blocked_after)


# -- kernel pipes as files -------------------------------------------------------
class OsPipeEnd(io.FileIO):
    """One end of :func:`os_pipe`, tracked by the supervisor until closed."""

    _sup: Any = None

    def close(self) -> None:
        if not self.closed:
            sup, self._sup = self._sup, None
            fd = self.fileno()
            super().close()
            if sup is not None:
                sup._discard_fd(fd)
        else:
            super().close()


def os_pipe(size: int | None = None) -> tuple[OsPipeEnd, OsPipeEnd]:
    """A kernel pipe as two binary files, close-on-exec, optionally resized.

    >>> from procflow import os_pipe
    >>> r, w = os_pipe()
    >>> _ = w.write(b"x"); w.close(); r.read(); r.close()
    b'x'
    """
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int or None, not {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
    from ._supervisor import current_supervisor

    rfd, wfd = os.pipe()  # O_CLOEXEC: a child gets an end only when handed it
    try:
        if size is not None:
            set_pipe_size(wfd, size)
        r = OsPipeEnd(rfd, "rb", closefd=True)
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    try:
        w = OsPipeEnd(wfd, "wb", closefd=True)
    except BaseException:
        r.close()
        os.close(wfd)
        raise
    sup = current_supervisor()
    for end in (r, w):
        end._sup = sup
        sup._add_fd(end.fileno(), end)
    return r, w


# -- copy -----------------------------------------------------------------------
def _raw_fd(obj: Any, mode: str) -> int | None:
    """The fd to use for zero-copy, or None when the object must be used as a stream."""
    if isinstance(obj, bool):
        raise TypeError("copy() takes file objects or fds, not bool")
    if isinstance(obj, int):
        return obj
    if isinstance(obj, (PipeReader, PipeWriter)):
        return None
    # A buffered reader may hold bytes it already read: only raw files are safe.
    if mode == "r" and not isinstance(obj, io.FileIO):
        return None
    fileno = getattr(obj, "fileno", None)
    if not callable(fileno):
        return None
    try:
        fd = fileno()
    except (io.UnsupportedOperation, OSError, ValueError):
        return None
    if mode == "w" and hasattr(obj, "flush"):
        obj.flush()
    return int(fd)


def _wait_fd(fd: int, events: int, cancel: Cancel | None) -> None:
    p = select.poll()
    p.register(fd, events)
    while True:
        if cancel is not None and cancel.cancelled:
            return
        if p.poll(100 if cancel is not None else None):
            return


def _ready(fd: int, events: int) -> bool:
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(0))


def _write_all(fd: int, data: Any, cancel: Cancel | None) -> int:
    """Write all of ``data`` (less only when cancelled); returns how much was written."""
    mv = memoryview(data)
    done = 0
    while mv:
        try:
            n = os.write(fd, mv)
        except BlockingIOError:
            _wait_fd(fd, select.POLLOUT, cancel)
            if cancel is not None and cancel.cancelled:
                return done
            continue
        mv = mv[n:]
        done += n
    return done


def _copy_fds(sfd: int, dfd: int, cancel: Cancel | None) -> int:
    total = 0
    s_mode = os.fstat(sfd).st_mode
    d_mode = os.fstat(dfd).st_mode
    use_splice = hasattr(os, "splice") and (stat.S_ISFIFO(s_mode) or stat.S_ISFIFO(d_mode))
    use_sendfile = not use_splice and stat.S_ISREG(s_mode) and hasattr(os, "sendfile")
    buf = bytearray(COPY_CHUNK) if not (use_splice or use_sendfile) else None
    # With a Cancel, splice must not sleep in the kernel on an idle pipe: it returns
    # EAGAIN instead and we wait in poll(), which checks the token every 100 ms.
    splice_flags = getattr(os, "SPLICE_F_NONBLOCK", 0) if cancel is not None else 0
    while True:
        if cancel is not None and cancel.cancelled:
            break
        try:
            if use_splice:
                n = os.splice(sfd, dfd, COPY_CHUNK, flags=splice_flags)
            elif use_sendfile:
                n = os.sendfile(dfd, sfd, None, COPY_CHUNK)
            else:
                assert buf is not None
                if cancel is not None:
                    _wait_fd(sfd, select.POLLIN, cancel)
                    if cancel.cancelled:
                        break
                n = os.readv(sfd, [buf])
                if n:
                    written = _write_all(dfd, memoryview(buf)[:n], cancel)
                    if written < n:  # cancelled mid-chunk
                        total += written
                        break
        except BlockingIOError:
            # An end is not ready (a non-blocking fd, or SPLICE_F_NONBLOCK): wait for that
            # one (polling both would spin while the other one is ready).
            if _ready(sfd, select.POLLIN):
                _wait_fd(dfd, select.POLLOUT, cancel)
            else:
                _wait_fd(sfd, select.POLLIN, cancel)
            continue
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and (use_splice or use_sendfile):
                use_splice = use_sendfile = False
                buf = bytearray(COPY_CHUNK)
                continue
            raise
        if n == 0:
            break
        total += n
    return total


def copy(src: Any, dst: Any, *, cancel: Cancel | None = None) -> int:
    """Move bytes from ``src`` to ``dst`` until EOF; returns how many moved.

    The analogue of Go's ``io.Copy``. When both ends are fds (ints, raw files,
    ``os_pipe()`` ends) the kernel moves the data (``os.splice`` with a pipe,
    ``os.sendfile`` from a regular file); otherwise it reads large chunks into
    one reused buffer. A :class:`Cancel` stops it between chunks.

    >>> import io
    >>> from procflow import copy
    >>> out = io.BytesIO()
    >>> copy(io.BytesIO(b"abc" * 1000), out)
    3000
    """
    if cancel is not None and not isinstance(cancel, Cancel):
        raise TypeError(f"cancel must be a procflow.Cancel, not {type(cancel).__name__}")
    sfd = _raw_fd(src, "r")
    dfd = _raw_fd(dst, "w")
    if sfd is None and not callable(getattr(src, "read", None)):
        raise TypeError(f"copy() source must be readable, got {type(src).__name__}")
    if dfd is None and not callable(getattr(dst, "write", None)):
        raise TypeError(f"copy() destination must be writable, got {type(dst).__name__}")
    if sfd is not None and dfd is not None:
        return _copy_fds(sfd, dfd, cancel)
    total = 0
    buf = bytearray(COPY_CHUNK)
    mv = memoryview(buf)
    while not (cancel is not None and cancel.cancelled):
        if sfd is not None:
            if cancel is not None:
                _wait_fd(sfd, select.POLLIN, cancel)  # a blocking read would not see the token
                if cancel.cancelled:
                    break
            try:
                n = os.readv(sfd, [buf])
            except BlockingIOError:
                _wait_fd(sfd, select.POLLIN, cancel)
                continue
            chunk: Any = mv[:n]
        else:
            readinto = getattr(src, "readinto", None)
            if callable(readinto):
                got = readinto(buf)
                n = 0 if got is None else int(got)
                chunk = mv[:n]
            else:
                data = src.read(COPY_CHUNK)
                if isinstance(data, str):
                    raise TypeError("copy() moves bytes; the source returned str")
                n = len(data)
                chunk = data
        if n == 0:
            break
        if dfd is not None:
            written = _write_all(dfd, chunk, cancel)
            if written < n:  # cancelled mid-chunk
                return total + written
        else:
            # write() of a raw stream may write less than asked: finish it.
            view = memoryview(chunk)
            while view:
                w = dst.write(view)
                if w is None or w >= len(view):
                    break
                view = view[w:]
        total += n
    return total
