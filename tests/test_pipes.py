"""Pipes: procflow.pipe() between threads, os_pipe() kernel pipes, and copy()."""

from __future__ import annotations

import fcntl
import io
import linecache
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from child import pattern_bytes
from conftest import child
from structlog.testing import capture_logs

from procflow import Cancel, PipeReader, PipeWriter, Supervisor, copy, os_pipe, pipe

MiB = 1 << 20
F_GETPIPE_SZ = 1032


class Boom(Exception):
    """An exception of the test's own."""


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a daemon thread; the list gets its result or exception."""
    out: list[Any] = []

    def main() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=main, daemon=True)
    t.start()
    return t, out


def wait_blocked_in_copy(t: threading.Thread, timeout: float = 10.0) -> None:
    """Wait until thread ``t`` sleeps in the kernel inside copy()'s wait (not between chunks).

    Synchronizes on the thread's state (its innermost Python frame and its
    kernel state), not on time.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        frame = sys._current_frames().get(t.ident or -1)
        if frame is not None:
            name = frame.f_code.co_name
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
            if name == "_wait_fd" or (name == "_copy_fds" and "os.splice(" in line):
                with open(f"/proc/self/task/{t.native_id}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "S":
                        return
        threading.Event().wait(0.001)
    raise AssertionError("the copy never blocked")


def read_all(r: Any) -> bytes:
    parts = []
    while True:
        d = r.read(65536)
        if not d:
            return b"".join(parts)
        parts.append(d)


@pytest.fixture
def ends() -> Iterator[tuple[PipeReader, PipeWriter]]:
    r, w = pipe(10)
    yield r, w
    r.close()
    w.close()


# --------------------------------------------------------------------------- pipe()
class TestPipeBlocking:
    def test_write_blocks_while_full(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """A write larger than the free room returns only once the reader has made room."""
        r, w = ends
        done = threading.Event()
        t, out = in_thread(lambda: (w.write(b"a" * 25), done.set()))
        assert r.read(10) == b"a" * 10
        # 10 bytes read, capacity 10: at most 20 of the 25 can have been put, so write() is still blocked.
        assert not done.is_set()
        got = b"a" * 10
        while len(got) < 25:
            got += r.read(100)
        assert done.wait(10)
        t.join(10)
        assert out == [(25, None)]
        assert got == b"a" * 25

    def test_read_blocks_until_data(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """A read waits for the writer."""
        r, w = ends
        t, out = in_thread(lambda: r.read(5))
        w.write(b"hey")
        t.join(10)
        assert out == [b"hey"]

    def test_read_returns_what_is_there(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """read(n) returns at most n bytes, spanning several writes."""
        r, w = ends
        w.write(b"ab")
        w.write(b"cde")
        assert r.read(4) == b"abcd"
        assert r.read(4) == b"e"

    def test_eof_after_writer_close(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """After writer.close() the reader gets the buffered data, then EOF, repeatedly."""
        r, w = ends
        w.write(b"abc")
        w.close()
        assert r.read() == b"abc"
        assert r.read(10) == b""
        assert r.read() == b""

    def test_close_wakes_blocked_reader(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """A reader blocked on an empty pipe gets EOF when the writer closes."""
        r, w = ends
        t, out = in_thread(lambda: r.read(5))
        w.close()
        t.join(10)
        assert out == [b""]

    def test_broken_pipe_after_reader_close(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """Writes after reader.close() raise BrokenPipeError."""
        r, w = ends
        w.write(b"x")
        r.close()
        with pytest.raises(BrokenPipeError):
            w.write(b"y")

    def test_blocked_writer_gets_broken_pipe(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """A writer blocked on a full pipe gets BrokenPipeError when the reader closes."""
        r, w = ends
        w.write(b"0123456789")  # full
        t, out = in_thread(lambda: w.write(b"more"))
        r.close()
        t.join(10)
        assert len(out) == 1 and isinstance(out[0], BrokenPipeError)

    def test_close_with_error_after_buffered_data(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """writer.close(error=exc): the reader gets the buffered data, then exc itself."""
        r, w = ends
        err = Boom("producer failed")
        w.write(b"data")
        w.close(error=err)
        assert r.read(100) == b"data"
        with pytest.raises(Boom) as info:
            r.read(1)
        assert info.value is err

    def test_closed_ends_refuse(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """A closed reader or writer refuses I/O with ValueError."""
        r, w = ends
        w.close()
        r.close()
        with pytest.raises(ValueError):
            w.write(b"x")
        with pytest.raises(ValueError):
            r.read(1)

    def test_no_fileno(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """pipe() ends have no fd."""
        r, w = ends
        with pytest.raises(io.UnsupportedOperation):
            r.fileno()
        with pytest.raises(io.UnsupportedOperation):
            w.fileno()

    def test_readinto_and_readall(self, ends: tuple[PipeReader, PipeWriter]) -> None:
        """readinto() and readall() work like a raw file's."""
        r, w = ends
        w.write(b"hello")
        buf = bytearray(3)
        assert r.readinto(buf) == 3 and buf == b"hel"
        w.close()
        assert r.readall() == b"lo"

    @pytest.mark.parametrize(("bad", "exc"), [(0, ValueError), (-5, ValueError), ("10", TypeError), (True, TypeError)])
    def test_bad_capacity(self, bad: Any, exc: type[Exception]) -> None:
        """pipe() checks its capacity."""
        with pytest.raises(exc):
            pipe(bad)


class TestPipeThreads:
    def test_several_writers_records_intact(self) -> None:
        """Concurrent write() calls are never interleaved and nothing is lost."""
        r, w = pipe(1000)
        writers, records, size = 4, 200, 300

        def produce(k: int) -> None:
            rec = bytes([65 + k]) * size
            for _ in range(records):
                w.write(rec)

        threads = [threading.Thread(target=produce, args=(k,), daemon=True) for k in range(writers)]
        for t in threads:
            t.start()

        def close_when_done() -> None:
            for t in threads:
                t.join(30)
            w.close()

        closer, _ = in_thread(close_when_done)
        data = read_all(r)
        closer.join(30)
        r.close()
        assert len(data) == writers * records * size
        recs = [data[i : i + size] for i in range(0, len(data), size)]
        assert all(len(set(rec)) == 1 for rec in recs), "a write was interleaved with another"
        for k in range(writers):
            assert sum(1 for rec in recs if rec[0] == 65 + k) == records

    def test_producer_consumer_large(self) -> None:
        """A producer and a consumer move 8 MiB through a small pipe, byte-exact."""
        r, w = pipe(4096)
        data = pattern_bytes(8 * MiB)

        def produce() -> None:
            view = memoryview(data)
            for i in range(0, len(data), 10000):
                w.write(view[i : i + 10000])
            w.close()

        t, out = in_thread(produce)
        got = read_all(r)
        t.join(30)
        r.close()
        assert out == [None]
        assert got == data


class TestPipeWithProc:
    def test_reader_as_stdin_file(self) -> None:
        """A pipe() reader feeds a child's stdin (a thread writes the other end)."""
        r, w = pipe()
        data = pattern_bytes(3 * MiB)

        def produce() -> None:
            w.write(data)
            w.close()

        t, _ = in_thread(produce)
        try:
            result = child("cat").stdin_file(r).stdout_capture().run()
        finally:
            t.join(30)
            r.close()
        assert result.stdout == data

    def test_writer_as_stdout_file(self) -> None:
        """A pipe() writer receives a child's stdout (a thread reads the other end); it stays open."""
        r, w = pipe()
        t, out = in_thread(lambda: read_all(r))
        try:
            child("pattern", "stdout", 2 * MiB).stdout_file(w).run()
            assert not w.closed  # owned by the caller
            w.write(b"!")
        finally:
            w.close()
            t.join(30)
            r.close()
        assert out == [pattern_bytes(2 * MiB) + b"!"]

    def test_writer_as_stderr_file(self) -> None:
        """A pipe() writer works as stderr_file too."""
        r, w = pipe()
        t, out = in_thread(lambda: read_all(r))
        try:
            child("stderr_lines", 3).stderr_file(w).run()
        finally:
            w.close()
            t.join(30)
            r.close()
        assert out == [b"err line 0\nerr line 1\nerr line 2\n"]

    def test_wrong_ends_refused(self) -> None:
        """A writer given as stdin_file (or a reader as stdout_file) is a ValueError."""
        from procflow import Proc

        r, w = pipe()
        try:
            with pytest.raises(ValueError):
                Proc("cat").stdin_file(w)
            with pytest.raises(ValueError):
                Proc("cat").stdout_file(r)
        finally:
            r.close()
            w.close()


# --------------------------------------------------------------------------- os_pipe()
class TestOsPipe:
    def test_binary_files_close_on_exec(self) -> None:
        """os_pipe() gives binary files whose fds a child does not inherit."""
        r, w = os_pipe()
        try:
            assert not os.get_inheritable(r.fileno())
            assert not os.get_inheritable(w.fileno())
            assert w.write(b"abc") == 3
            w.close()
            assert r.read() == b"abc"
        finally:
            r.close()
            w.close()

    def test_not_seen_by_children(self) -> None:
        """A child started while an os_pipe() is open does not hold its ends."""
        r, w = os_pipe()
        try:
            out = child("fds").read()
            assert str(r.fileno()) not in out.split() and str(w.fileno()) not in out.split()
        finally:
            r.close()
            w.close()

    @pytest.mark.parametrize("size", [1 << 20, 100_000, 4096])
    def test_size_applied(self, size: int) -> None:
        """os_pipe(size) resizes the pipe with F_SETPIPE_SZ (the kernel rounds up to pages)."""
        r, w = os_pipe(size)
        try:
            got = fcntl.fcntl(w.fileno(), F_GETPIPE_SZ)
            assert got >= size
            assert got < 2 * size or got == 4096
        finally:
            r.close()
            w.close()

    def test_default_size_untouched(self) -> None:
        """os_pipe() without size keeps the kernel's default (64 KiB)."""
        r, w = os_pipe()
        try:
            assert fcntl.fcntl(r.fileno(), F_GETPIPE_SZ) == 65536
        finally:
            r.close()
            w.close()

    @pytest.mark.parametrize(("bad", "exc"), [(0, ValueError), (-1, ValueError), ("1", TypeError), (True, TypeError)])
    def test_bad_size(self, bad: Any, exc: type[Exception]) -> None:
        """os_pipe() checks its size."""
        with pytest.raises(exc):
            os_pipe(bad)

    def test_as_stdin_and_stdout_file(self) -> None:
        """Both ends are handed to a child directly: stdin_file(reader), stdout_file(writer)."""
        in_r, in_w = os_pipe()
        out_r, out_w = os_pipe(1 << 20)
        try:
            in_w.write(b"through the kernel\n")
            in_w.close()
            child("cat").stdin_file(in_r).stdout_file(out_w).run()
            out_w.close()
            assert out_r.read() == b"through the kernel\n"
        finally:
            for f in (in_r, in_w, out_r, out_w):
                f.close()

    def test_between_two_procs_with_threads(self) -> None:
        """An os_pipe() connects two runs started separately, 4 MiB byte-exact."""
        r, w = os_pipe()
        try:
            producer = child("pattern", "stdout", 4 * MiB).stdout_file(w).start()
            w.close()  # the child holds its own copy
            result = child("cat").stdin_file(r).stdout_capture().run()
            assert producer.wait(timeout=30).returncode == 0
        finally:
            r.close()
            w.close()
        assert result.stdout == pattern_bytes(4 * MiB)

    def test_open_ends_reported_by_supervisor(self) -> None:
        """Supervisor.shutdown() reports os_pipe() ends still open as leaked fds, then closes them."""
        with capture_logs() as logs, Supervisor() as sup:
            r, w = os_pipe()
            r2, w2 = os_pipe()
            r2.close()
            w2.close()
            fds = (r.fileno(), w.fileno())
            report = sup.shutdown()
        assert set(report.fds) == set(fds)
        assert r.closed and w.closed
        leaked = {e["fd"] for e in logs if e["event"] == "supervisor.leak" and e.get("kind") == "fd"}
        assert leaked == set(fds)

    def test_closed_ends_not_reported(self) -> None:
        """Ends closed by their owner are not reported."""
        with Supervisor() as sup:
            r, w = os_pipe()
            with r, w:
                pass
            assert not sup.shutdown()


# --------------------------------------------------------------------------- copy()
@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the zero-copy system calls copy() makes."""
    calls = {"splice": 0, "sendfile": 0}
    real_splice, real_sendfile = os.splice, os.sendfile

    def splice(*a: Any, **k: Any) -> int:
        calls["splice"] += 1
        return real_splice(*a, **k)

    def sendfile(*a: Any, **k: Any) -> int:
        calls["sendfile"] += 1
        return real_sendfile(*a, **k)

    monkeypatch.setattr(os, "splice", splice)
    monkeypatch.setattr(os, "sendfile", sendfile)
    return calls


@pytest.fixture
def src_file(tmp_path: Path) -> Path:
    p = tmp_path / "src.bin"
    p.write_bytes(pattern_bytes(5 * MiB + 123))
    return p


class TestCopy:
    def test_file_to_file_sendfile(self, src_file: Path, tmp_path: Path, counted: dict[str, int]) -> None:
        """Raw file to file: exact bytes and count, moved by sendfile."""
        dst = tmp_path / "dst.bin"
        with open(src_file, "rb", buffering=0) as s, open(dst, "wb") as d:
            assert copy(s, d) == 5 * MiB + 123
        assert dst.read_bytes() == src_file.read_bytes()
        assert counted["sendfile"] >= 1

    def test_file_to_os_pipe_splice(self, src_file: Path, counted: dict[str, int]) -> None:
        """File into an os_pipe(): exact, moved by splice."""
        r, w = os_pipe()
        t, out = in_thread(lambda: read_all(r))
        try:
            with open(src_file, "rb", buffering=0) as s:
                assert copy(s, w) == 5 * MiB + 123
            w.close()
            t.join(30)
        finally:
            r.close()
            w.close()
        assert out == [src_file.read_bytes()]
        assert counted["splice"] >= 1

    def test_os_pipe_to_file_splice(self, tmp_path: Path, counted: dict[str, int]) -> None:
        """An os_pipe() into a file (the zero-copy path): exact, moved by splice."""
        data = pattern_bytes(3 * MiB)
        r, w = os_pipe()

        def produce() -> None:
            w.write(data)
            w.close()

        t, _ = in_thread(produce)
        dst = tmp_path / "dst.bin"
        try:
            with open(dst, "wb") as d:
                assert copy(r, d) == len(data)
            t.join(30)
        finally:
            r.close()
            w.close()
        assert dst.read_bytes() == data
        assert counted["splice"] >= 1

    def test_fds(self, src_file: Path, tmp_path: Path) -> None:
        """Plain fd numbers work at both ends."""
        dst = tmp_path / "dst.bin"
        sfd = os.open(src_file, os.O_RDONLY)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT)
        try:
            assert copy(sfd, dfd) == src_file.stat().st_size
        finally:
            os.close(sfd)
            os.close(dfd)
        assert dst.read_bytes() == src_file.read_bytes()

    def test_bytesio_to_pipe_writer(self) -> None:
        """BytesIO into a procflow.pipe() writer (a thread reads the other end)."""
        data = pattern_bytes(3 * MiB + 7)
        r, w = pipe()
        t, out = in_thread(lambda: read_all(r))
        try:
            assert copy(io.BytesIO(data), w) == len(data)
            w.close()
            t.join(30)
        finally:
            r.close()
            w.close()
        assert out == [data]

    def test_pipe_reader_to_bytesio(self) -> None:
        """A procflow.pipe() reader into BytesIO, until the writer closes."""
        data = pattern_bytes(MiB + 1)
        r, w = pipe(1000)

        def produce() -> None:
            w.write(data)
            w.close()

        t, _ = in_thread(produce)
        out = io.BytesIO()
        try:
            assert copy(r, out) == len(data)
            t.join(30)
        finally:
            r.close()
        assert out.getvalue() == data

    def test_buffered_source_keeps_read_ahead(self, src_file: Path) -> None:
        """A buffered file already read from is copied from its position, read-ahead included."""
        out = io.BytesIO()
        with open(src_file, "rb") as s:
            head = s.read(10)
            n = copy(s, out)
        assert head + out.getvalue() == src_file.read_bytes()
        assert n == src_file.stat().st_size - 10

    def test_buffered_destination_order(self, src_file: Path, tmp_path: Path) -> None:
        """What was written to a buffered destination before and after stays in order."""
        dst = tmp_path / "dst.bin"
        with open(src_file, "rb", buffering=0) as s, open(dst, "wb") as d:
            d.write(b"HEADER")
            copy(s, d)
            d.write(b"TRAILER")
        assert dst.read_bytes() == b"HEADER" + src_file.read_bytes() + b"TRAILER"

    def test_empty_source(self, tmp_path: Path) -> None:
        """An empty source copies 0 bytes."""
        (tmp_path / "e").write_bytes(b"")
        with open(tmp_path / "e", "rb", buffering=0) as s:
            assert copy(s, io.BytesIO()) == 0

    def test_already_cancelled(self, src_file: Path) -> None:
        """A cancelled token copies nothing."""
        c = Cancel()
        c.cancel()
        out = io.BytesIO()
        with open(src_file, "rb", buffering=0) as s:
            assert copy(s, out, cancel=c) == 0
        assert out.getvalue() == b""

    def test_cancel_between_chunks(self) -> None:
        """Cancelling from the destination's write() stops the copy after that chunk."""
        c = Cancel()
        got: list[int] = []

        class Sink:
            def write(self, b: Any) -> int:
                got.append(len(b))
                if len(got) == 3:
                    c.cancel()
                return len(b)

        n = copy(io.BytesIO(bytes(10 * MiB)), Sink(), cancel=c)
        assert len(got) == 3
        assert n == sum(got) < 10 * MiB

    def test_cancel_stops_copy_waiting_on_idle_pipe(self) -> None:
        """A copy waiting on a pipe nobody writes to returns soon after cancel(), with its count."""
        c = Cancel()
        src_r, src_w = os_pipe()
        dst_r, dst_w = os_pipe()
        try:
            t, out = in_thread(lambda: copy(src_r, dst_w, cancel=c))
            src_w.write(b"abc")
            src_w.flush()
            assert dst_r.read(3) == b"abc"  # the copy moved it
            wait_blocked_in_copy(t)  # and now waits for more
            c.cancel()
            t.join(5)
            assert not t.is_alive(), "cancel() did not stop copy()"
            assert out == [3]
        finally:
            for f in (src_r, src_w, dst_r, dst_w):
                f.close()

    @pytest.mark.parametrize(("src", "dst"), [(1.5, io.BytesIO()), (True, io.BytesIO()), (io.BytesIO(), object())])
    def test_bad_arguments(self, src: Any, dst: Any) -> None:
        """copy() refuses what cannot be read or written with TypeError."""
        with pytest.raises(TypeError):
            copy(src, dst)

    def test_bad_cancel(self) -> None:
        """cancel must be a Cancel."""
        with pytest.raises(TypeError):
            copy(io.BytesIO(), io.BytesIO(), cancel=object())  # type: ignore[arg-type]
