"""Streaming I/O: lazy input, output callbacks, lines()/chunks()/reader()/writer(), capture limits."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import child
from structlog.testing import capture_logs

from procflow import ExitError, OutputLimitExceeded, Proc, ProcTimeout, os_pipe

MiB = 1 << 20


def hexs(*pieces: bytes) -> list[str]:
    return [p.hex() for p in pieces]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (procflow reaped it), or is only a zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_exited(pid: int, timeout: float = 10.0) -> None:
    """Wait until our child ``pid`` has exited (is a zombie), without reaping it."""
    end = time.monotonic() + timeout
    while not gone(pid):
        assert time.monotonic() < end, f"pid {pid} did not exit"
        threading.Event().wait(0.005)


def group_empties(pgid: int, timeout: float = 10.0) -> bool:
    """True once no live process is left in process group ``pgid`` (a signal takes a moment)."""
    end = time.monotonic() + timeout
    while True:
        left = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p.pid)
            except (OSError, psutil.Error):
                continue
        if not left:
            return True
        if time.monotonic() > end:
            return False
        threading.Event().wait(0.01)


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def spawned_pids(logs: list[dict[str, Any]]) -> list[int]:
    return [e["pid"] for e in logs if e["event"] == "proc.spawn"]


class Boom(Exception):
    """An exception of the test's own, to check it comes back unchanged."""


# --------------------------------------------------------------------------- .input()
class TestInputIterable:
    def test_endless_generator_into_head_is_not_materialized(self) -> None:
        """An endless generator feeds `head -c N`: the run ends and only about a pipe's worth was pulled."""
        pulled = 0

        def endless() -> Iterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 1
                yield b"y" * 4096

        r = Proc("head", "-c", "100000").input(endless()).stdout_capture().run()
        assert r.stdout == b"y" * 100000
        # 100 kB were needed; the rest is what fits in the pipe (grown to 1 MiB at most) and one chunk.
        assert pulled * 4096 < 100000 + 2 * MiB + 4096

    def test_generator_pulled_only_as_the_child_reads(self) -> None:
        """While the child does not read, the generator is advanced only until the pipe is full."""
        pulled = 0
        filling = threading.Event()

        def endless() -> Iterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 1
                if pulled == 32:
                    filling.set()
                yield b"z" * 1024

        # sleep_forever prints "ready" and never reads its stdin.
        with child("sleep_forever").input(endless()).lines() as it:
            assert next(it) == "ready"
            assert filling.wait(10)
        # A default pipe holds 64 KiB; allow for growth to 1 MiB and the chunk in flight.
        assert 32 <= pulled <= 1024 + 2

    def test_generator_raising_stops_the_process_and_reraises(self) -> None:
        """An exception from the input generator stops the child and is raised, the same object, in the caller."""
        err = Boom("from the generator")

        def gen() -> Iterator[bytes]:
            yield b"some data\n"
            raise err

        # sleep_forever never exits by itself: only procflow can stop it.
        with capture_logs() as logs, pytest.raises(Boom) as info:
            child("sleep_forever").input(gen()).stdout_null().run()
        assert info.value is err
        (pid,) = spawned_pids(logs)
        assert gone(pid)

    def test_iterator_runs_once(self) -> None:
        """An iterator given to input() feeds one run; a second run raises ValueError and spawns nothing."""
        p = child("cat").input(iter([b"a", b"b"])).stdout_capture()
        assert p.run().stdout == b"ab"
        with capture_logs() as logs, pytest.raises(ValueError, match="already consumed"):
            p.run()
        assert spawned_pids(logs) == []

    def test_list_is_rerunnable(self) -> None:
        """A list of chunks can feed any number of runs."""
        p = child("cat").input([b"a", "b", b"c"]).stdout_capture()
        assert p.run().stdout == b"abc"
        assert p.run().stdout == b"abc"

    def test_str_chunks_encoded_utf8_by_default(self) -> None:
        """str chunks are encoded as UTF-8 without .text()."""
        r = child("cat").input(["é", b"|", "€"]).stdout_capture().run()
        assert r.stdout == "é|€".encode()

    def test_str_chunks_encoded_as_text_says(self) -> None:
        """With .text(encoding) str chunks are encoded with that encoding."""
        r = child("cat").input(["é", "ü"]).text("latin-1").stdout_capture().run()
        assert r.stdout == "éü"

    def test_bad_chunk_type_raises_typeerror_in_caller(self) -> None:
        """A chunk that is neither bytes nor str raises TypeError in the calling thread."""
        with pytest.raises(TypeError, match="int"):
            child("cat").input([b"ok", 5]).stdout_null().run()

    def test_large_input_exact(self) -> None:
        """Many chunks arrive in order and complete."""
        chunks = [bytes([i % 256]) * 10000 for i in range(500)]
        r = child("cat").input(iter(chunks)).stdout_capture().run()
        assert r.stdout == b"".join(chunks)


# --------------------------------------------------------------------------- callbacks
class TestOnStdoutLines:
    def test_multibyte_char_split_across_reads(self) -> None:
        """A character split between two reads reaches the callback whole."""
        euro = "€".encode()
        got: list[str] = []
        child("drained_writes", "stdout", *hexs(b"price: " + euro[:1], euro[1:] + b"5\n")).on_stdout(
            got.append
        ).run()
        assert got == ["price: €5"]

    def test_crlf_split_across_reads_is_one_terminator(self) -> None:
        """A \\r\\n split between reads ends one line, not two."""
        got: list[str] = []
        child("drained_writes", "stdout", *hexs(b"a\r", b"\nb\r\n")).on_stdout(got.append).run()
        assert got == ["a", "b"]

    def test_cr_terminators_and_final_line_without_newline(self) -> None:
        """\\r alone ends a line (progress bars); a final line without terminator is delivered."""
        got: list[str] = []
        child("drained_writes", "stdout", *hexs(b"10%\r20%\r", b"done\nlast")).on_stdout(got.append).run()
        assert got == ["10%", "20%", "done", "last"]

    def test_final_cr_is_a_terminator(self) -> None:
        """A trailing \\r at EOF ends the last line without an empty extra line."""
        got: list[str] = []
        child("drained_writes", "stdout", *hexs(b"x\r")).on_stdout(got.append).run()
        assert got == ["x"]

    def test_empty_lines_kept(self) -> None:
        """Empty lines are delivered as empty strings."""
        got: list[str] = []
        Proc("printf", "a\n\n\nb\n").on_stdout(got.append).run()
        assert got == ["a", "", "", "b"]

    def test_text_encoding_used(self) -> None:
        """With .text(encoding) lines are decoded with it."""
        got: list[str] = []
        child("drained_writes", "stdout", *hexs("é\n".encode("latin-1"))).text("latin-1").on_stdout(got.append).run()
        assert got == ["é"]

    def test_invalid_utf8_replaced(self) -> None:
        """Without .text() undecodable bytes become U+FFFD, never an error."""
        got: list[str] = []
        child("drained_writes", "stdout", *hexs(b"a\xffb\n")).on_stdout(got.append).run()
        assert got == ["a\ufffdb"]


class TestOnStdoutChunks:
    def test_chunks_are_bytes_and_complete(self) -> None:
        """lines=False gives bytes chunks whose concatenation is the output."""
        got: list[bytes] = []
        child("pattern", "stdout", 300000).on_stdout(got.append, lines=False).run()
        assert all(isinstance(c, bytes) for c in got)
        from child import pattern_bytes

        assert b"".join(got) == pattern_bytes(300000)

    def test_chunk_boundaries_follow_reads(self) -> None:
        """Each piece the child wrote (and we read separately) is its own chunk."""
        got: list[bytes] = []
        child("drained_writes", "stdout", *hexs(b"one", b"two", b"three")).on_stdout(got.append, lines=False).run()
        assert got == [b"one", b"two", b"three"]


class TestCallbackTee:
    def test_with_capture(self) -> None:
        """on_stdout combined with capture: both see every byte."""
        got: list[str] = []
        r = Proc("printf", "a\nb\n").on_stdout(got.append).stdout_capture().run()
        assert got == ["a", "b"]
        assert r.stdout == b"a\nb\n"

    def test_capture_then_callback_order_does_not_matter(self) -> None:
        """stdout_capture() before or after on_stdout() gives the same tee."""
        got: list[str] = []
        r = Proc("printf", "a\nb\n").stdout_capture().on_stdout(got.append).run()
        assert got == ["a", "b"]
        assert r.stdout == b"a\nb\n"

    def test_with_stdout_path(self, tmp_path: Path) -> None:
        """on_stdout combined with stdout_path: the file gets every byte, the callback every line."""
        out = tmp_path / "out.txt"
        lines: list[str] = []
        chunks: list[bytes] = []
        Proc("seq", "1", "20000").stdout_path(out).on_stdout(lines.append).on_stdout(chunks.append, lines=False).run()
        expected = "".join(f"{i}\n" for i in range(1, 20001))
        assert out.read_text() == expected
        assert lines == [str(i) for i in range(1, 20001)]
        assert b"".join(chunks) == expected.encode()

    def test_on_stderr_with_capture(self) -> None:
        """on_stderr tees with stderr_capture; on a pipeline every stage's stderr is seen."""
        got: list[str] = []
        r = (child("stderr_lines", 2) | child("stderr_lines", 3)).on_stderr(got.append).stderr_capture().run()
        assert sorted(got) == sorted([f"err line {i}" for i in range(2)] + [f"err line {i}" for i in range(3)])
        assert r.stderr.count(b"err line") == 5

    def test_on_stderr_chunks(self) -> None:
        """on_stderr with lines=False gives bytes."""
        got: list[bytes] = []
        child("write", "stderr", 5000, "e").on_stderr(got.append, lines=False).run()
        assert b"".join(got) == b"e" * 5000


class TestCallbackRaising:
    def test_on_stdout_raising_stops_and_reraises(self) -> None:
        """A callback's exception stops the child (which would never exit) and is re-raised unchanged."""
        err = Boom("from on_stdout")

        def cb(line: str) -> None:
            if line == "ready":
                raise err

        with capture_logs() as logs, pytest.raises(Boom) as info:
            child("sleep_forever").on_stdout(cb).run()
        assert info.value is err
        (pid,) = spawned_pids(logs)
        assert gone(pid)

    def test_on_stderr_chunk_raising_stops_and_reraises(self) -> None:
        """A chunk callback on stderr raising stops an endless writer."""
        def cb(chunk: bytes) -> None:
            raise Boom("from on_stderr")

        with pytest.raises(Boom):
            child("write", "stderr", 10**12).on_stderr(cb, lines=False).run()

    def test_callback_raising_on_last_line(self) -> None:
        """A callback failing on the final line (after EOF) is still raised."""
        def cb(line: str) -> None:
            if line == "last":
                raise Boom("last")

        with pytest.raises(Boom):
            Proc("printf", "a\nlast").on_stdout(cb).run()


# --------------------------------------------------------------------------- lines()
class TestLines:
    def test_yields_as_data_arrives(self) -> None:
        """A line is yielded while the child still runs, waiting for our next input."""
        r, w = os_pipe()
        try:
            with child("ready_echo").stdin_file(r).lines() as it:
                r.close()
                assert next(it) == "ready"  # the child is now blocked reading stdin
                assert not gone(it.pid)
                w.write(b"ping\n")
                w.flush()
                assert next(it) == "ping"
                w.close()
                assert list(it) == []
            assert it.result is not None and it.result.returncode == 0
        finally:
            r.close()
            w.close()

    def test_break_stops_and_reaps_and_closes_fds(self) -> None:
        """Leaving the loop early stops the (endless) child, reaps it and closes every fd."""
        before = fds()
        with child("lines_forever").lines() as it:
            pid = it.pid
            for i, line in enumerate(it):
                assert line == f"line {i}"
                if i == 1000:
                    break
        assert gone(pid)
        assert fds() == before
        assert it.result is not None and it.result.returncode < 0

    def test_close_without_with(self) -> None:
        """close() stops and reaps too."""
        it = child("lines_forever").lines()
        pid = it.pid
        assert next(it) == "line 0"
        it.close()
        assert gone(pid)
        assert list(it) == []  # nothing more after close

    def test_dropped_iterator_stops_child(self) -> None:
        """An iterator that is just dropped stops and reaps its child and closes its fds."""
        before = fds()
        it = child("lines_forever").lines()
        pid = it.pid
        assert next(it) == "line 0"
        del it
        gc.collect()
        assert gone(pid)
        assert fds() == before

    def test_dropped_iterator_inside_loop_function(self) -> None:
        """An iterator abandoned in a function (early return) stops its child when collected."""
        def first_matching() -> str:
            for line in child("lines_forever").lines():
                if line.endswith(" 7"):
                    return line
            return ""

        with capture_logs() as logs:
            assert first_matching() == "line 7"
            gc.collect()
        (pid,) = spawned_pids(logs)
        assert gone(pid)

    def test_failed_exit_raises_after_all_lines(self) -> None:
        """Every line comes first, then ExitError at the end of the iteration."""
        it = Proc("sh", "-c", "printf 'a\\nb\\nc'; exit 3").lines()
        got = []
        with pytest.raises(ExitError) as info:
            for line in it:
                got.append(line)
        assert got == ["a", "b", "c"]
        assert info.value.result.returncode == 3

    def test_unchecked_failure_no_error(self) -> None:
        """With unchecked() a failed exit ends the iteration normally."""
        with Proc("sh", "-c", "echo a; exit 3").unchecked().lines() as it:
            assert list(it) == ["a"]
        assert it.result is not None and it.result.returncode == 3

    def test_timeout_raises_proctimeout(self) -> None:
        """A timeout while iterating stops the tree and raises ProcTimeout."""
        with child("sleep_forever").timeout(0.3).lines() as it:
            pid = it.pid
            assert next(it) == "ready"
            with pytest.raises(ProcTimeout):
                next(it)
        assert gone(pid)

    def test_timeout_while_data_keeps_flowing(self) -> None:
        """The deadline is enforced even when the pipe is never idle (`yes` outruns this loop)."""
        guard = time.monotonic() + 20
        with pytest.raises(ProcTimeout), Proc("yes").timeout(0.3).lines() as it:
            for line in it:
                assert sum(range(300)) and line == "y"  # some work per line: the reader is the slow side
                assert time.monotonic() < guard, "the timeout never fired while data kept flowing"

    def test_cancel_while_data_keeps_flowing(self) -> None:
        """A Cancel is noticed between chunks too, not only when the pipe is idle."""
        from procflow import Cancel, Cancelled

        token = Cancel()
        guard = time.monotonic() + 20
        with pytest.raises(Cancelled), Proc("yes").lines(cancel=token) as it:
            for i, _ in enumerate(it):
                assert sum(range(300))  # some work per line: the reader is the slow side
                if i == 1000:
                    token.cancel()
                assert time.monotonic() < guard, "the cancel was never noticed while data kept flowing"

    def test_deadline_passing_after_the_child_finished_is_not_a_timeout(self) -> None:
        """A slow reader of a child that finished in time gets all its output, no ProcTimeout."""
        with child("write", "stdout", 20000, "z").timeout(0.3).chunks() as it:
            first = next(it)
            wait_exited(it.pid)
            threading.Event().wait(0.5)  # let the deadline pass (not a synchronization)
            rest = b"".join(it)
        assert first + rest == b"z" * 20000
        assert it.result is not None and it.result.returncode == 0

    def test_timeout_while_grandchild_holds_stdout(self) -> None:
        """The deadline applies after the child exited too, while a grandchild keeps stdout open."""
        cmd = Proc("sh", "-c", "sleep 60 & echo a").timeout(0.5).wait_delay(30)
        with capture_logs() as logs, pytest.raises(ProcTimeout), cmd.lines() as it:
            for _ in it:
                pass
        (pid,) = spawned_pids(logs)
        assert group_empties(pid), "the grandchild holding stdout survived the timeout"

    def test_cancel_while_waiting(self) -> None:
        """A Cancel from another thread ends a blocked iteration with Cancelled."""
        from procflow import Cancel, Cancelled

        token = Cancel()
        with pytest.raises(Cancelled), child("sleep_forever").lines(cancel=token) as it:
            for line in it:
                assert line == "ready"
                threading.Thread(target=token.cancel, daemon=True).start()
        assert gone(it.pid)

    def test_pipeline(self) -> None:
        """lines() on a pipeline reads the last stage."""
        with (Proc("seq", "1", "5") | Proc("grep", "-v", "3")).lines() as it:
            assert list(it) == ["1", "2", "4", "5"]

    @pytest.mark.parametrize(
        "configure",
        [
            lambda p: p.stdout_capture(),
            lambda p: p.on_stdout(print),
            lambda p: p.stdout_null(),
            lambda p: p.stdout_path("/dev/null"),
        ],
        ids=["capture", "on_stdout", "null", "path"],
    )
    @pytest.mark.parametrize("call", ["lines", "chunks", "reader"])
    def test_stdout_already_taken_is_valueerror(self, configure: Any, call: str) -> None:
        """lines()/chunks()/reader() refuse a Proc whose stdout already goes elsewhere (nothing spawned)."""
        with capture_logs() as logs, pytest.raises(ValueError, match="stdout"):
            getattr(configure(Proc("echo", "x")), call)()
        assert spawned_pids(logs) == []

    def test_split_char_crlf_cr_and_final_line(self) -> None:
        """Decoding across reads, \\r\\n split across reads, \\r alone, and an unterminated last line."""
        euro = "€".encode()
        pieces = hexs(b"a" + euro[:2], euro[2:] + b"\r", b"\nb\rc\n", b"d")
        with child("drained_writes", "stdout", *pieces).lines() as it:
            assert list(it) == ["a€", "b", "c", "d"]

    def test_text_encoding(self) -> None:
        """lines() decodes with .text()'s encoding."""
        with child("drained_writes", "stdout", "e90a").text("latin-1").lines() as it:
            assert list(it) == ["é"]

    def test_many_lines_exact(self) -> None:
        """A large output arrives complete and in order."""
        with Proc("seq", "1", "200000").lines() as it:
            assert list(it) == [str(i) for i in range(1, 200001)]

    def test_exception_in_loop_body_stops_child(self) -> None:
        """An exception leaving the `with` stops the child and goes on unchanged."""
        with pytest.raises(Boom), child("lines_forever").lines() as it:
            pid = it.pid
            for _ in it:
                raise Boom()
        assert gone(pid)

    def test_exception_after_child_failed_goes_on_unchanged(self) -> None:
        """If the child already failed, the caller's exception still wins over ExitError."""
        with pytest.raises(Boom), Proc("sh", "-c", "echo a; exit 3").lines() as it:
            assert next(it) == "a"
            raise Boom()

    def test_close_after_child_failed_does_not_raise(self) -> None:
        """close() before EOF does not raise for a child that failed meanwhile (a grandchild holds stdout)."""
        # The shell exits 3 at once; its background job keeps stdout open until it is told to go.
        r, w = os_pipe()
        try:
            # (A background job's stdin is /dev/null in sh: hand it the pipe as fd 3.)
            it = Proc("sh", "-c", "exec 3<&0; (read x <&3; echo late) & echo a; exit 3").stdin_file(r).lines()
            r.close()
            assert next(it) == "a"
            wait_exited(it.pid)  # the shell has exited (a zombie: procflow reaps only at the end)
            w.write(b"go\n")
            w.flush()
            assert next(it) == "late"  # procflow noticed the exit while waiting for this
            it.close()
            assert it.result is not None and it.result.returncode == 3
        finally:
            r.close()
            w.close()

    def test_iter_returns_self(self) -> None:
        """lines() gives a true iterator: iter(it) is it, and next() and for-loops share position."""
        with Proc("seq", "1", "5").lines() as it:
            assert iter(it) is it
            assert next(it) == "1"
            assert [x for x in it] == ["2", "3", "4", "5"]


# --------------------------------------------------------------------------- chunks()
class TestChunks:
    def test_chunks_complete(self) -> None:
        """chunks() yields bytes whose concatenation is stdout."""
        from child import pattern_bytes

        with child("pattern", "stdout", 1_000_000).chunks() as it:
            data = b"".join(it)
        assert data == pattern_bytes(1_000_000)

    def test_yields_as_data_arrives(self) -> None:
        """A chunk is yielded while the child still waits for us."""
        r, w = os_pipe()
        try:
            with child("ready_echo").stdin_file(r).chunks() as it:
                r.close()
                assert next(it) == b"ready\n"
                w.write(b"x\n")
                w.flush()
                assert next(it) == b"x\n"
                w.close()
                assert list(it) == []
        finally:
            r.close()
            w.close()

    def test_break_and_drop(self) -> None:
        """Leaving early stops the child; so does dropping the iterator."""
        before = fds()
        with child("write", "stdout", 10**12).chunks() as it:
            pid = it.pid
            next(it)
        assert gone(pid)
        it2 = child("write", "stdout", 10**12).chunks()
        pid2 = it2.pid
        next(it2)
        del it2
        gc.collect()
        assert gone(pid2)
        assert fds() == before

    def test_failed_exit(self) -> None:
        """A failed exit raises ExitError at the end."""
        with pytest.raises(ExitError):
            for _ in Proc("sh", "-c", "echo x; exit 2").chunks():
                pass


# --------------------------------------------------------------------------- reader()
class TestReader:
    def test_read_all(self) -> None:
        """read() reads to EOF."""
        with Proc("seq", "1", "3").reader() as r:
            assert r.read() == b"1\n2\n3\n"
            assert r.read() == b""

    def test_read1_and_read_n(self) -> None:
        """read(n)/read1(n) return at most n bytes, at least one until EOF."""
        from child import pattern_bytes

        with child("pattern", "stdout", 100000).reader() as r:
            parts = []
            while True:
                d = r.read(1000)
                if not d:
                    break
                assert 1 <= len(d) <= 1000
                parts.append(d)
                d1 = r.read1(777)
                assert len(d1) <= 777
                parts.append(d1)
        assert b"".join(parts) == pattern_bytes(100000)

    def test_readline_and_iteration(self) -> None:
        """readline() returns lines with their newline; iteration yields lines."""
        with Proc("printf", "a\nbb\nccc").reader() as r:
            assert r.readline() == b"a\n"
            assert list(r) == [b"bb\n", b"ccc"]

    def test_readline_then_read_loses_nothing(self) -> None:
        """What readline() read ahead is returned by the following read()/read1()/readinto()."""
        with Proc("printf", "a\nb\nc\nd\n").reader() as r:
            assert r.readline() == b"a\n"
            buf = bytearray(2)
            assert r.readinto(buf) == 2 and bytes(buf) == b"b\n"
            assert r.read1(2) == b"c\n"
            assert r.read() == b"d\n"

    def test_readline_size(self) -> None:
        """readline(size) stops at size."""
        with Proc("printf", "abcdef\n").reader() as r:
            assert r.readline(3) == b"abc"
            assert r.readline() == b"def\n"

    def test_readinto(self) -> None:
        """readinto fills a buffer with what arrived."""
        with Proc("printf", "hello").reader() as r:
            buf = bytearray(10)
            n = r.readinto(buf)
            assert buf[:n] == b"hello"[:n] and n >= 1
            rest = r.read()
        assert bytes(buf[:n]) + rest == b"hello"

    def test_close_before_eof_stops_child(self) -> None:
        """close() before EOF stops and reaps the child without an error."""
        before = fds()
        r = child("write", "stdout", 10**12).reader()
        pid = r.pid
        assert r.read(10) == b"x" * 10
        r.close()
        assert gone(pid)
        assert fds() == before
        with pytest.raises(ValueError):
            r.read(1)

    def test_eof_after_failed_exit_raises(self) -> None:
        """Reaching EOF after a failed exit raises ExitError."""
        with Proc("sh", "-c", "echo out; exit 5").reader() as r:
            assert r.readline() == b"out\n"
            with pytest.raises(ExitError) as info:
                r.read()
        assert info.value.result.returncode == 5

    def test_usable_by_stdlib(self) -> None:
        """The reader works with io.BufferedReader and shutil.copyfileobj."""
        import io
        import shutil

        with Proc("seq", "1", "10000").reader() as r:
            out = io.BytesIO()
            shutil.copyfileobj(r, out)
        assert out.getvalue() == "".join(f"{i}\n" for i in range(1, 10001)).encode()
        with Proc("seq", "1", "3").reader() as r2:
            buffered = io.BufferedReader(r2)
            assert buffered.read(3) == b"1\n2"
            assert buffered.read() == b"\n3\n"


# --------------------------------------------------------------------------- writer()
class TestWriter:
    def test_backpressure_blocks_until_child_reads(self) -> None:
        """write() blocks while the child does not read, and completes once it does."""
        gate_r, gate_w = os_pipe()
        total = 8 * MiB  # more than any pipe can hold
        done = threading.Event()
        errors: list[BaseException] = []
        try:
            w = child("gate_then_count", gate_r.fileno()).pass_fds(gate_r).stdout_capture().writer()

            def write() -> None:
                try:
                    w.write(b"w" * total)
                except BaseException as e:
                    errors.append(e)
                finally:
                    done.set()

            t = threading.Thread(target=write, daemon=True)
            t.start()
            assert not done.wait(0.3), "write() returned while the child was not reading"
            assert w.bytes_written < total
            gate_w.write(b"g")
            gate_w.flush()
            assert done.wait(30)
            t.join(10)
            assert errors == []
            w.close()
            assert w.result is not None and w.result.stdout == f"{total}\n".encode()
        finally:
            gate_r.close()
            gate_w.close()

    def test_no_deadlock_with_captured_output(self) -> None:
        """Writing 32 MiB to `cat` whose stdout is captured never deadlocks and loses nothing."""
        from child import pattern_bytes

        data = pattern_bytes(32 * MiB)
        with child("cat").stdout_capture().writer() as w:
            view = memoryview(data)
            for i in range(0, len(data), MiB):
                assert w.write(view[i : i + MiB]) == MiB
        assert w.result is not None and w.result.stdout == data

    def test_no_deadlock_with_stdout_and_stderr(self) -> None:
        """A child writing lots to stdout and stderr while we write is drained meanwhile."""
        n = 4 * MiB
        with child("mix", "i", n, n, n).stdout_capture().stderr_capture().writer() as w:
            for _ in range(4):
                w.write(b"i" * MiB)
        assert w.result is not None
        assert w.result.stdout == b"o" * n
        assert w.result.stderr.startswith(b"e" * n) and f"read={n}".encode() in w.result.stderr

    def test_stderr_to_sink_while_writing(self, tmp_path: Path) -> None:
        """Output sent to files does not block the writer either."""
        n = 2 * MiB
        out, err = tmp_path / "out", tmp_path / "err"
        with child("mix", "i", n, n, n).stdout_path(out).stderr_path(err).writer() as w:
            w.write(b"i" * n)
        assert out.stat().st_size == n
        assert err.read_bytes().startswith(b"e" * n)

    def test_str_with_text(self) -> None:
        """With .text() str is accepted and encoded (a character split between writes too)."""
        with child("cat").text("utf-8").stdout_capture().writer() as w:
            w.write("héllo ")
            w.write("wörld")
        assert w.result is not None and w.result.stdout == "héllo wörld"

    def test_str_without_text_is_typeerror(self) -> None:
        """Without .text() str is refused with TypeError."""
        with child("cat").stdout_null().writer() as w, pytest.raises(TypeError, match="text"):
            w.write("x")

    def test_close_raises_exit_error(self) -> None:
        """close() raises ExitError when the child fails."""
        w = Proc("sh", "-c", "cat >/dev/null; exit 3").writer()
        w.write(b"data")
        with pytest.raises(ExitError) as info:
            w.close()
        assert info.value.result.returncode == 3

    def test_early_exit_is_not_an_error(self) -> None:
        """A child that exits without reading everything does not make write() raise."""
        with child("read_line_then_exit").stdout_capture().writer() as w:
            w.write(b"first\n")
            for _ in range(16):  # 16 MiB: far more than a pipe, after the child is gone
                w.write(b"x" * MiB)
        assert w.result is not None and w.result.stdout == b"first\n"

    def test_exception_in_with_stops_child(self) -> None:
        """Leaving the `with` by an exception stops the child and lets the exception go on."""
        with capture_logs() as logs, pytest.raises(Boom), child("sleep_forever").stdout_null().writer() as w:
            w.write(b"x")
            raise Boom()
        (pid,) = spawned_pids(logs)
        assert gone(pid)

    def test_exception_after_child_failed_goes_on_unchanged(self) -> None:
        """The caller's exception wins over the ExitError of a child that failed meanwhile."""
        with pytest.raises(Boom), child("exit", 4).writer() as w:
            w.write(b"x" * MiB)  # returns once the child is gone (EPIPE)
            raise Boom()

    def test_exception_after_child_failed_and_noticed(self) -> None:
        """Same, once procflow has noticed the failed exit (a grandchild keeps stdin open, unread)."""
        # The shell exits 4 at once; `sleep` inherits stdin (as fd 3) and never reads it, so the
        # write blocks, procflow notices the exit while waiting, and gives up after the wait delay.
        cmd = Proc("sh", "-c", "exec 3<&0; sleep 60 <&3 & exit 4").wait_delay(0.2)
        with capture_logs() as logs, pytest.raises(Boom), cmd.writer() as w:
            w.write(b"x" * (4 * MiB))
            raise Boom()
        (pid,) = spawned_pids(logs)
        assert gone(pid)
        assert group_empties(pid), "the grandchild in the run's process group survived"

    @pytest.mark.parametrize(
        "configure",
        [lambda p: p.input(b"x"), lambda p: p.stdin_null(), lambda p: p.stdin_path("/dev/null"),
         lambda p: p.stdin_inherit()],
        ids=["input", "null", "path", "inherit"],
    )
    def test_stdin_already_set_is_valueerror(self, configure: Any) -> None:
        """writer() refuses a Proc whose stdin is already set (nothing spawned)."""
        with capture_logs() as logs, pytest.raises(ValueError, match="stdin"):
            configure(Proc("cat")).writer()
        assert spawned_pids(logs) == []

    def test_pipeline(self) -> None:
        """writer() on a pipeline feeds the first stage; the last one's output is captured."""
        import gzip

        with (child("cat") | Proc("gzip", "-1")).stdout_capture().writer() as w:
            for _ in range(100):
                w.write(b"hello " * 1000)
        assert w.result is not None
        assert gzip.decompress(w.result.stdout) == b"hello " * 100_000

    def test_timeout_while_the_child_keeps_up(self) -> None:
        """The deadline is enforced between writes too, when write() never has to wait."""
        guard = time.monotonic() + 20
        block = b"w" * 4096
        with pytest.raises(ProcTimeout), Proc("cat").stdout_null().timeout(0.3).writer() as w:
            while True:
                w.write(block)
                assert sum(range(3000))  # some work per write: the writer is the slow side
                assert time.monotonic() < guard, "the timeout never fired while writing"

    def test_bytes_written_counts(self) -> None:
        """bytes_written counts what the child's pipe took."""
        with child("cat").stdout_null().writer() as w:
            w.write(b"abc")
            w.write(bytearray(b"de"))
            w.write(memoryview(b"fgh"))
            assert w.bytes_written == 8


# --------------------------------------------------------------------------- capture limits
class TestCaptureLimit:
    @pytest.mark.parametrize("stream", ["stdout", "stderr"])
    def test_limit_stops_endless_writer(self, stream: str) -> None:
        """Past max_bytes the child is stopped and OutputLimitExceeded names the stream; exactly max_bytes kept."""
        p = child("write", stream, 10**12)
        p = p.stdout_capture(max_bytes=100_000) if stream == "stdout" else p.stderr_capture(max_bytes=100_000)
        with capture_logs() as logs, pytest.raises(OutputLimitExceeded) as info:
            p.run()
        err = info.value
        assert err.stream == stream
        assert stream in str(err)
        kept = err.result.stdout if stream == "stdout" else err.result.stderr
        assert kept == b"x" * 100_000
        (pid,) = spawned_pids(logs)
        assert gone(pid)

    def test_within_limit_is_fine(self) -> None:
        """Output of exactly max_bytes is not an error."""
        r = child("write", "stdout", 1000).stdout_capture(max_bytes=1000).run()
        assert r.stdout == b"x" * 1000

    def test_limit_with_text(self) -> None:
        """With .text() the kept prefix is decoded (a split character replaced, not an error)."""
        with pytest.raises(OutputLimitExceeded) as info:
            child("drained_writes", "stdout", ("€" * 10).encode().hex()).text().stdout_capture(max_bytes=4).run()
        assert info.value.result.stdout.startswith("€")


# --------------------------------------------------------------------------- bad input at the builder
class TestBadInput:
    @pytest.mark.parametrize("bad", [5, None, 3.5, object(), {"a": 1}])
    def test_non_iterable_or_wrong_input(self, bad: Any) -> None:
        """input() refuses what is not bytes, str or an iterable of chunks, with TypeError."""
        with pytest.raises(TypeError):
            Proc("cat").input(bad)

    @pytest.mark.parametrize("method", ["on_stdout", "on_stderr"])
    def test_callback_not_callable(self, method: str) -> None:
        """A callback that is not callable is a TypeError at the call."""
        with pytest.raises(TypeError, match=method):
            getattr(Proc("true"), method)("print")

    @pytest.mark.parametrize("method", ["stdout_capture", "stderr_capture"])
    @pytest.mark.parametrize("value", [0, -1])
    def test_max_bytes_not_positive(self, method: str, value: int) -> None:
        """max_bytes <= 0 is a ValueError at the call."""
        with pytest.raises(ValueError, match="max_bytes"):
            getattr(Proc("true"), method)(max_bytes=value)

    @pytest.mark.parametrize("value", ["10", 1.5, True])
    def test_max_bytes_wrong_type(self, value: Any) -> None:
        """A max_bytes that is not an int is a TypeError."""
        with pytest.raises(TypeError):
            Proc("true").stdout_capture(max_bytes=value)

    @pytest.mark.parametrize("method", ["stdin_file", "stdout_file", "stderr_file"])
    def test_closed_file(self, method: str, tmp_path: Path) -> None:
        """A closed file is a ValueError at the call."""
        f = open(tmp_path / "f", "w+b")  # noqa: SIM115 - closed on purpose below
        f.close()
        with pytest.raises(ValueError, match="closed"):
            getattr(Proc("true"), method)(f)

    @pytest.mark.parametrize("method", ["stdin_file", "stdout_file", "stderr_file"])
    def test_invalid_fd(self, method: str) -> None:
        """A negative or closed fd number is a ValueError at the call."""
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        for fd in (-1, r):
            with pytest.raises(ValueError, match="file descriptor"):
                getattr(Proc("true"), method)(fd)

    def test_file_open_the_wrong_way(self, tmp_path: Path) -> None:
        """A file open only for reading given as stdout_file is a ValueError."""
        p = tmp_path / "f"
        p.write_bytes(b"")
        with open(p, "rb") as f, pytest.raises(ValueError, match="writing"):
            Proc("true").stdout_file(f)

    def test_nothing_spawned_nothing_leaked(self) -> None:
        """Bad builder calls spawn nothing."""
        before = fds()
        with capture_logs() as logs:
            for bad in (lambda: Proc("cat").input(7), lambda: Proc("cat").on_stdout(None),  # type: ignore[arg-type]
                        lambda: Proc("cat").stdout_capture(max_bytes=0)):
                with pytest.raises((TypeError, ValueError)):
                    bad()
        assert spawned_pids(logs) == []
        assert fds() == before


def test_python_child_sees_eof_on_default_stdin() -> None:
    """lines() on a child reading stdin: stdin is /dev/null, so the child ends instead of hanging."""
    with child("ready_echo").lines() as it:
        assert list(it) == ["ready"]
    assert it.result is not None and it.result.returncode == 0
