"""Running a Proc: run/read/start, the Running handle, Result fields, and where each stream goes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from conftest import child

from procflow import ExitError, Proc, ProcTimeout, Result, Running, Secret

MiB = 1 << 20


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read_line(fd: int, timeout: float = 10.0) -> bytes:
    """Read one line from ``fd``, waiting at most ``timeout`` seconds in all."""
    end = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = end - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            raise AssertionError(f"no line within {timeout} s (got {buf!r})")
        data = os.read(fd, 1)
        if not data:
            raise AssertionError(f"EOF before a full line (got {buf!r})")
        buf += data
    return buf


@contextlib.contextmanager
def started_ready(proc: Proc) -> Iterator[Running]:
    """Start ``proc`` with stdout on a pipe we hold, and return once it printed ``ready``."""
    r, w = os.pipe()
    try:
        running = proc.stdout_file(w).start()
        os.close(w)
        w = -1
        try:
            assert _read_line(r) == b"ready\n"
            yield running
        finally:
            if running.poll() is None:
                running.kill()
                with contextlib.suppress(Exception):
                    running.wait(timeout=10)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


class TestRunReadStart:
    """The three ways to run: run() -> Result, read() -> str, start() -> Running."""

    def test_run_returns_result(self) -> None:
        """run() waits and returns a Result with the captured output."""
        r = child("echo", "hello").stdout_capture().run()
        assert isinstance(r, Result)
        assert r.stdout == b"hello\n"
        assert r.returncode == 0

    def test_run_raises_exit_error(self) -> None:
        """run() raises ExitError on a non-zero exit, with the result attached."""
        with pytest.raises(ExitError) as info:
            child("exit", 3).run()
        assert info.value.result.returncode == 3

    def test_unchecked_returns_failure(self) -> None:
        """unchecked() returns the non-zero Result instead of raising."""
        r = child("exit", 5).unchecked().run()
        assert r.returncode == 5
        assert not r.ok

    def test_read_strips_trailing_newlines_only(self) -> None:
        """read() strips trailing newlines (\\n and \\r\\n) like $(...), but keeps other whitespace."""
        code = "import sys; sys.stdout.write('  a b \\n\\nc\\t\\r\\n\\n\\n')"
        assert Proc(sys.executable, "-c", code).read() == "  a b \n\nc\t"

    def test_read_decodes_utf8_with_replace(self) -> None:
        """read() without text() decodes UTF-8, replacing invalid bytes."""
        code = "import sys; sys.stdout.buffer.write('é'.encode() + b'\\xff\\n')"
        assert Proc(sys.executable, "-c", code).read() == "é\ufffd"

    def test_read_with_text_encoding(self) -> None:
        """read() follows .text()'s encoding."""
        code = "import sys; sys.stdout.buffer.write('é'.encode('latin-1'))"
        assert Proc(sys.executable, "-c", code).text("latin-1").read() == "é"

    def test_read_empty(self) -> None:
        """read() of a child that prints nothing is the empty string."""
        assert child("exit", 0).read() == ""

    def test_read_raises_on_failure(self) -> None:
        """read() raises ExitError like run()."""
        with pytest.raises(ExitError):
            child("exit", 1).read()

    def test_start_returns_at_once(self) -> None:
        """start() returns while the child is still running."""
        running = child("sleep_forever").stdout_null().unchecked().start()
        try:
            assert isinstance(running, Running)
            assert running.poll() is None
            assert _alive(running.pid)
        finally:
            running.kill()
            r = running.wait(timeout=10)
        assert r.returncode == -signal.SIGKILL

    def test_inherited_stdout(self, capfd: pytest.CaptureFixture[str]) -> None:
        """By default stdout and stderr are inherited from the parent."""
        child("mix", "oe", 0, 3, 2).run()
        out, err = capfd.readouterr()
        assert out == "ooo"
        assert err == "ee\nread=0\n"


class TestRunning:
    """The Running handle: pid, poll, wait, signals and the context manager."""

    def test_pid_and_pids(self) -> None:
        """pid is the child's pid and pids holds it alone."""
        running = child("pgid").stdout_capture().start()
        r = running.wait(timeout=10)
        pid = int(r.stdout.split()[0])
        assert running.pid == pid == r.pid
        assert running.pids == (pid,)

    def test_poll(self) -> None:
        """poll() is None while running and the Result once it ended (without raising for a failure)."""
        with started_ready(child("sleep_forever")) as running:
            assert running.poll() is None
            running.terminate()
            with pytest.raises(ExitError):
                running.wait(timeout=10)
            r = running.poll()
            assert r is not None
            assert r.returncode == -signal.SIGTERM

    def test_wait_timeout_leaves_child_running(self) -> None:
        """wait(timeout) raises the builtin TimeoutError (not ProcTimeout) and the child keeps running."""
        with started_ready(child("sleep_forever").unchecked()) as running:
            with pytest.raises(TimeoutError) as info:
                running.wait(timeout=0.2)
            assert not isinstance(info.value, ProcTimeout)
            assert running.poll() is None
            assert _alive(running.pid)
            running.terminate()
            assert running.wait(timeout=10).returncode == -signal.SIGTERM

    def test_wait_timeout_with_capture_then_finish(self) -> None:
        """After a wait timeout, a later wait still collects the complete captured output."""
        r, w = os.pipe()
        try:
            code = "import sys; print('x', flush=True); sys.stdin.read(); print('y')"
            running = Proc(sys.executable, "-c", code).stdin_file(r).stdout_capture().start()
            with pytest.raises(TimeoutError):
                running.wait(timeout=0.2)
            os.close(w)
            w = -1
            assert running.wait(timeout=10).stdout == b"x\ny\n"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def test_terminate_and_kill(self) -> None:
        """terminate() does not stop a child ignoring SIGTERM; kill() does."""
        with started_ready(child("ignore_sigterm").unchecked()) as running:
            running.terminate()
            with pytest.raises(TimeoutError):
                running.wait(timeout=0.3)
            assert _alive(running.pid)
            running.kill()
            assert running.wait(timeout=10).returncode == -signal.SIGKILL

    def test_send_signal(self) -> None:
        """send_signal() delivers the given signal to the child."""
        with started_ready(child("sleep_forever").unchecked()) as running:
            running.send_signal(signal.SIGUSR1)
            assert running.wait(timeout=10).returncode == -signal.SIGUSR1

    def test_signals_after_exit_are_harmless(self) -> None:
        """terminate/kill/send_signal after the end do nothing and raise nothing."""
        running = child("exit", 0).start()
        r = running.wait(timeout=10)
        running.terminate()
        running.kill()
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=10) is r or running.wait(timeout=10).returncode == 0

    def test_wait_twice(self) -> None:
        """wait() can be called again and gives the same outcome."""
        running = child("echo", "a").stdout_capture().start()
        assert running.wait(timeout=10).stdout == b"a\n"
        assert running.wait(timeout=10).stdout == b"a\n"
        failing = child("exit", 2).start()
        for _ in range(2):
            with pytest.raises(ExitError):
                failing.wait(timeout=10)

    def test_context_manager_normal_exit_waits(self) -> None:
        """Leaving the with block normally waits for the child."""
        with child("echo", "done").stdout_capture().start() as running:
            pass
        r = running.poll()
        assert r is not None
        assert r.stdout == b"done\n"

    def test_context_manager_normal_exit_raises_exit_error(self) -> None:
        """A failed exit is raised when the with block ends normally."""
        with pytest.raises(ExitError), child("exit", 4).start():
            pass

    def test_context_manager_exception_stops_child(self) -> None:
        """Leaving by an exception stops and reaps the child, then the exception goes on."""
        with pytest.raises(RuntimeError, match="boom"), child("sleep_forever").stdout_capture().start() as running:
            pid = running.pid
            raise RuntimeError("boom")
        assert not _alive(pid)
        r = running.poll()
        assert r is not None
        assert r.returncode < 0

    def test_deadline_enforced_without_a_waiter(self) -> None:
        """A started run's timeout fires even while nobody waits; wait() then raises ProcTimeout."""
        start = time.monotonic()
        running = child("sleep_forever").stdout_capture().timeout(0.3).start()
        with pytest.raises(TimeoutError) as early:
            running.wait(timeout=0.05)
        assert not isinstance(early.value, ProcTimeout)
        with pytest.raises(ProcTimeout) as info:
            running.wait(timeout=10)
        assert info.value.result.stdout == b"ready\n"
        assert time.monotonic() - start < 5

    def test_context_manager_exception_with_deadline(self) -> None:
        """An exception in the with block stops a run that has a background deadline watcher too."""
        with pytest.raises(RuntimeError), child("sleep_forever").stdout_null().timeout(30).start() as running:
            pid = running.pid
            raise RuntimeError("boom")
        assert not _alive(pid)

    def test_blocking_wait_burns_no_cpu(self) -> None:
        """Waiting 1 s for a quiet child with captured streams costs the parent almost no CPU."""
        p = Proc("sleep", "1").input(b"").stdout_capture().stderr_capture()
        cpu = time.process_time()
        r = p.run()
        used = time.process_time() - cpu
        assert r.duration >= 0.9
        assert used < 0.15, f"the parent used {used:.3f} s of CPU while waiting"

    def test_repr(self) -> None:
        """repr names the pid and whether it still runs."""
        running = child("exit", 0).start()
        running.wait(timeout=10)
        assert str(running.pid) in repr(running)
        assert "finished" in repr(running)


class TestResult:
    """Result fields: argv, returncode, output, pid, timing, resources, stages, ok, check()."""

    def test_fields_of_a_success(self) -> None:
        """A successful run fills every field."""
        p = child("echo", "hi").stdout_capture()
        r = p.run()
        assert r.argv == p.argv
        assert all(isinstance(a, str) for a in r.argv)
        assert r.returncode == 0
        assert r.stdout == b"hi\n"
        assert r.stderr is None
        assert r.pid > 0
        assert 0 < r.duration < 30
        assert r.cpu_time >= 0
        assert r.max_rss > 0
        assert r.stages == (r,)
        assert r.ok is True
        assert r.check() is r

    def test_argv_redacts_secret(self) -> None:
        """Secret argv items appear as *** in Result.argv."""
        r = Proc(sys.executable, "-c", "pass", Secret("s3cret")).run()
        assert r.argv[-1] == "***"
        assert "s3cret" not in repr(r)

    def test_negative_returncode_for_signal(self) -> None:
        """A child killed by a signal has returncode -signal."""
        r = child("kill_self", int(signal.SIGTERM)).unchecked().run()
        assert r.returncode == -signal.SIGTERM
        assert not r.ok
        with pytest.raises(ExitError):
            r.check()

    def test_check_raises_on_failure(self) -> None:
        """check() on a failed unchecked result raises ExitError carrying the result."""
        r = child("exit", 9).unchecked().run()
        with pytest.raises(ExitError) as info:
            r.check()
        assert info.value.result is r

    def test_bytes_and_text(self) -> None:
        """Captured output is bytes by default and str with .text()."""
        b = child("mix", "oe", 0, 2, 1).stdout_capture().stderr_capture().run()
        assert b.stdout == b"oo"
        assert b.stderr == b"e\nread=0\n"
        t = child("mix", "oe", 0, 2, 1).stdout_capture().stderr_capture().text().run()
        assert t.stdout == "oo"
        assert t.stderr == "e\nread=0\n"

    def test_none_when_not_captured(self) -> None:
        """stdout/stderr are None unless captured."""
        r = child("mix", "oe", 0, 2, 1).stdout_null().stderr_capture().run()
        assert r.stdout is None
        assert r.stderr is not None
        r = child("mix", "oe", 0, 2, 1).stdout_capture().stderr_null().run()
        assert r.stderr is None

    def test_cpu_time_of_a_busy_child(self) -> None:
        """A child burning 0.3 s of CPU reports cpu_time of about that (from wait4)."""
        r = child("burn_cpu", 0.3).stdout_capture().run()
        assert r.stdout == b"burnt\n"
        assert 0.25 <= r.cpu_time < 5
        assert r.duration >= 0.25

    def test_max_rss_of_a_big_child(self) -> None:
        """A child touching 300 MiB reports max_rss of at least that, and not absurdly more."""
        r = child("alloc", 300).stdout_capture().run()
        assert r.stdout == f"{300 * MiB}\n".encode()
        assert 300 * MiB <= r.max_rss < 2048 * MiB

    def test_duration_of_a_short_child(self) -> None:
        """duration measures the child, not some fixed overhead."""
        fast = Proc("true").run()
        slow = Proc("sleep", "0.3").run()
        assert fast.duration < slow.duration
        assert slow.duration >= 0.29


class TestStdin:
    """Where stdin comes from: /dev/null by default, Python data, a path, a file or fd."""

    def test_default_is_devnull(self) -> None:
        """A child reading stdin sees EOF at once by default (it does not hang on the terminal)."""
        r = child("read_all").stdout_capture().timeout(20).run()
        assert r.stdout == b"read=0\n"

    def test_default_stdin_is_devnull_device(self) -> None:
        """The default stdin is /dev/null itself."""
        code = "import os; print(os.readlink('/proc/self/fd/0'))"
        assert Proc(sys.executable, "-c", code).read() == "/dev/null"

    def test_stdin_null_explicit(self) -> None:
        """stdin_null() gives EOF too."""
        assert child("read_all").stdin_null().read() == "read=0"

    @pytest.mark.parametrize("data", [b"abc\x00\xff", bytearray(b"abc"), memoryview(b"xyz")])
    def test_input_bytes_like(self, data: bytes | bytearray | memoryview) -> None:
        """bytes, bytearray and memoryview are fed byte-exact."""
        assert child("cat").input(data).stdout_capture().run().stdout == bytes(data)

    def test_input_str_is_utf8(self) -> None:
        """A str input without .text() is encoded as UTF-8."""
        assert child("cat").input("é€").stdout_capture().run().stdout == "é€".encode()

    def test_input_str_with_text_encoding(self) -> None:
        """A str input with .text(encoding) is encoded with that encoding."""
        r = child("cat").input("é").text("latin-1").stdout_capture().run()
        assert r.stdout == "é"
        raw = child("cat").input("é").text("latin-1").stdout_capture().run()
        assert raw.stdout == "é"
        assert child("cat").input("é").stdout_capture().run().stdout == b"\xc3\xa9"

    def test_input_large(self) -> None:
        """8 MiB of input arrive byte-exact."""
        data = os.urandom(8 * MiB)
        assert child("cat").input(data).stdout_capture().run().stdout == data

    def test_stdin_path(self, tmp_path: pathlib.Path) -> None:
        """stdin_path() feeds a file's contents."""
        f = tmp_path / "in"
        f.write_bytes(b"from a file\n")
        assert child("cat").stdin_path(f).read() == "from a file"
        assert child("cat").stdin_path(str(f)).read() == "from a file"

    def test_stdin_path_missing(self, tmp_path: pathlib.Path) -> None:
        """A missing stdin_path raises an error naming the path, and leaves nothing behind."""
        with pytest.raises(OSError, match="missing-input"):
            child("cat").stdin_path(tmp_path / "missing-input").run()

    def test_stdin_file_object_stays_open(self, tmp_path: pathlib.Path) -> None:
        """stdin_file(file) feeds the file; the caller's file object stays open."""
        f = tmp_path / "in"
        f.write_bytes(b"object\n")
        with open(f, "rb") as fh:
            assert child("cat").stdin_file(fh).read() == "object"
            assert not fh.closed
            os.fstat(fh.fileno())

    def test_stdin_file_fd_stays_open(self, tmp_path: pathlib.Path) -> None:
        """stdin_file(fd) feeds the fd; the fd stays open."""
        f = tmp_path / "in"
        f.write_bytes(b"fd\n")
        fd = os.open(f, os.O_RDONLY)
        try:
            assert child("cat").stdin_file(fd).read() == "fd"
            os.fstat(fd)
        finally:
            os.close(fd)

    def test_stdin_file_pipe_fd_is_handed_over(self) -> None:
        """An fd is handed to the child directly: the child's stdin is the same pipe."""
        r, w = os.pipe()
        try:
            os.write(w, b"piped")
            os.close(w)
            w = -1
            code = "import os, sys; print(os.readlink('/proc/self/fd/0')); print(sys.stdin.read())"
            out = Proc(sys.executable, "-c", code).stdin_file(r).read().splitlines()
            assert out == [os.readlink(f"/proc/self/fd/{r}"), "piped"]
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def test_epipe_on_early_exit_is_not_an_error(self) -> None:
        """A child that exits without reading all its input is not an error (EPIPE ignored)."""
        data = b"first line\n" + b"x" * (16 * MiB)
        r = child("read_line_then_exit").input(data).stdout_capture().run()
        assert r.ok
        assert r.stdout == b"first line\n"

    def test_epipe_keeps_the_failing_status(self) -> None:
        """A child that exits early with a failure still reports its own status."""
        with pytest.raises(ExitError) as info:
            child("read_line_then_exit", 3).input(b"a\n" + b"x" * (4 * MiB)).run()
        assert info.value.result.returncode == 3


class TestStdoutStderr:
    """Where stdout and stderr go: capture, path, file, null, or each other."""

    def test_stdout_path_truncates(self, tmp_path: pathlib.Path) -> None:
        """stdout_path() replaces the file's contents."""
        f = tmp_path / "out"
        f.write_bytes(b"old contents\n")
        r = child("echo", "new").stdout_path(f).run()
        assert r.stdout is None
        assert f.read_bytes() == b"new\n"

    def test_stdout_path_append(self, tmp_path: pathlib.Path) -> None:
        """stdout_path(append=True) appends."""
        f = tmp_path / "out"
        f.write_bytes(b"one\n")
        child("echo", "two").stdout_path(f, append=True).run()
        child("echo", "three").stdout_path(str(f), append=True).run()
        assert f.read_bytes() == b"one\ntwo\nthree\n"

    def test_stdout_path_is_handed_to_the_child(self, tmp_path: pathlib.Path) -> None:
        """A path sink is the child's own fd 1 (no copy through Python)."""
        f = tmp_path / "out"
        code = "import os; print(os.readlink('/proc/self/fd/1'))"
        Proc(sys.executable, "-c", code).stdout_path(f).run()
        assert f.read_text().strip() == str(f)

    def test_stderr_path(self, tmp_path: pathlib.Path) -> None:
        """stderr_path() writes stderr to a file, append works the same."""
        f = tmp_path / "err"
        child("mix", "e", 0, 0, 3).stderr_path(f).run()
        child("mix", "e", 0, 0, 2).stderr_path(f, append=True).run()
        assert f.read_bytes() == b"eee\nread=0\nee\nread=0\n"

    def test_stdout_file_object_stays_open(self, tmp_path: pathlib.Path) -> None:
        """stdout_file(file) writes into it; the caller's file stays open and usable."""
        f = tmp_path / "out"
        with open(f, "wb") as fh:
            child("echo", "child").stdout_file(fh).run()
            assert not fh.closed
            fh.write(b"after\n")
        assert f.read_bytes() == b"child\nafter\n"

    def test_stdout_file_flushes_callers_buffer_first(self, tmp_path: pathlib.Path) -> None:
        """Bytes the caller wrote to a buffered file before running land before the child's."""
        f = tmp_path / "out"
        with open(f, "wb") as fh:
            p = child("echo", "child").stdout_file(fh)
            fh.write(b"before\n")
            p.run()
            fh.write(b"after\n")
        assert f.read_bytes() == b"before\nchild\nafter\n"

    def test_stdout_file_fd(self, tmp_path: pathlib.Path) -> None:
        """stdout_file(fd) writes to the fd, which stays open."""
        f = tmp_path / "out"
        fd = os.open(f, os.O_WRONLY | os.O_CREAT)
        try:
            child("echo", "viafd").stdout_file(fd).run()
            os.fstat(fd)
        finally:
            os.close(fd)
        assert f.read_bytes() == b"viafd\n"

    def test_stderr_file(self, tmp_path: pathlib.Path) -> None:
        """stderr_file(file) writes stderr there."""
        f = tmp_path / "err"
        with open(f, "wb") as fh:
            child("mix", "e", 0, 0, 1).stderr_file(fh).run()
            assert not fh.closed
        assert f.read_bytes() == b"e\nread=0\n"

    def test_null(self, capfd: pytest.CaptureFixture[str]) -> None:
        """stdout_null()/stderr_null() discard the output: nothing reaches the parent's fds."""
        r = child("mix", "oe", 0, 5, 5).stdout_null().stderr_null().run()
        assert r.stdout is None
        assert r.stderr is None
        out, err = capfd.readouterr()
        assert out == ""
        assert err == ""

    def test_stdout_to_stderr(self) -> None:
        """stdout_to_stderr() sends stdout into the stderr capture."""
        r = child("echo", "out").stdout_to_stderr().stderr_capture().run()
        assert r.stdout is None
        assert r.stderr == b"out\n"

    def test_stderr_to_stdout(self) -> None:
        """stderr_to_stdout() merges stderr into the stdout capture, in order."""
        code = "import sys\nfor i in range(3):\n print('o', i, flush=True); print('e', i, file=sys.stderr, flush=True)"
        r = Proc(sys.executable, "-c", code).stderr_to_stdout().stdout_capture().run()
        assert r.stderr is None
        assert r.stdout == b"o 0\ne 0\no 1\ne 1\no 2\ne 2\n"

    def test_stderr_to_stdout_path(self, tmp_path: pathlib.Path) -> None:
        """stderr_to_stdout() follows stdout into a file."""
        f = tmp_path / "both"
        child("mix", "oe", 0, 2, 2).stdout_path(f).stderr_to_stdout().run()
        assert f.read_bytes() == b"ooee\nread=0\n"

    def test_capture_large_both(self) -> None:
        """Large stdout and stderr captures are byte-exact at once."""
        r = child("pattern", "stdout", 5 * MiB + 3).stdout_capture().stderr_capture().run()
        from child import pattern_bytes

        assert r.stdout == pattern_bytes(5 * MiB + 3)
        assert r.stderr == b""


class TestText:
    """Text mode: incremental decoding and the errors policy."""

    def test_multibyte_split_across_reads(self) -> None:
        """A character split across two flushed writes is decoded intact."""
        r = child("split_utf8", 60).stdout_capture().text().run()
        chars = "é€😀"
        assert r.stdout == "".join(chars[i % 3] for i in range(60)) + "\n"
        assert "\ufffd" not in r.stdout

    def test_split_utf8_read(self) -> None:
        """read() decodes split characters intact too."""
        assert child("split_utf8", 3).read() == "é€😀"

    def test_default_errors_replace(self) -> None:
        """Invalid bytes become U+FFFD by default."""
        code = "import sys; sys.stdout.buffer.write(b'a\\xffb'); sys.stderr.buffer.write(b'\\xfe')"
        r = Proc(sys.executable, "-c", code).stdout_capture().stderr_capture().text().run()
        assert r.stdout == "a\ufffdb"
        assert r.stderr == "\ufffd"

    @pytest.mark.parametrize(("errors", "want"), [("ignore", "ab"), ("backslashreplace", "a\\xffb")])
    def test_errors_policy(self, errors: str, want: str) -> None:
        """The errors policy given to text() is applied."""
        code = "import sys; sys.stdout.buffer.write(b'a\\xffb')"
        assert Proc(sys.executable, "-c", code).stdout_capture().text(errors=errors).run().stdout == want

    def test_errors_strict_raises(self) -> None:
        """errors='strict' raises UnicodeDecodeError in the caller, leaving nothing behind."""
        code = "import sys; sys.stdout.buffer.write(b'a\\xffb')"
        with pytest.raises(UnicodeDecodeError):
            Proc(sys.executable, "-c", code).stdout_capture().text(errors="strict").run()

    def test_other_encoding(self) -> None:
        """text(encoding) decodes with that codec."""
        code = "import sys; sys.stdout.buffer.write('été'.encode('utf-16'))"
        assert Proc(sys.executable, "-c", code).stdout_capture().text("utf-16").run().stdout == "été"


class TestEnvironment:
    """env, env_update, env_remove, env_clear and cwd."""

    def test_env_sets(self) -> None:
        """env() sets variables in the child, leaving the parent's environment alone."""
        before = dict(os.environ)
        assert child("env", "PF_A", "PF_B").env(PF_A="1", PF_B="two words").read() == "PF_A=1\nPF_B=two words"
        assert dict(os.environ) == before

    def test_env_inherits_the_rest(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without env changes the child sees the parent's environment."""
        monkeypatch.setenv("PF_INHERITED", "yes")
        assert child("env", "PF_INHERITED").read() == "PF_INHERITED=yes"
        assert child("env", "PF_INHERITED").env(PF_X="1").read() == "PF_INHERITED=yes"

    def test_env_update_and_secret(self) -> None:
        """env_update() takes a mapping; a Secret value reaches the child as its real value."""
        out = child("env", "PF_A", "PF_S").env_update({"PF_A": "a", "PF_S": Secret("tok")}).read()
        assert out == "PF_A=a\nPF_S=tok"

    def test_env_later_wins(self) -> None:
        """A later env() overrides an earlier one."""
        assert child("env", "PF_A").env(PF_A="1").env(PF_A="2").read() == "PF_A=2"

    def test_env_remove(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """env_remove() unsets an inherited variable."""
        monkeypatch.setenv("PF_GONE", "x")
        assert child("env", "PF_GONE", "PATH").env_remove("PF_GONE").read().splitlines()[0] == "PF_GONE=<unset>"

    def test_env_clear_then_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """env_clear() starts empty; later env() adds to it."""
        monkeypatch.setenv("PF_GONE", "x")
        code = "import os; print(sorted(k for k in os.environ if k != 'LC_CTYPE'))"
        out = Proc(sys.executable, "-c", code).env_clear().env(PF_ONLY="1").read()
        assert out == "['PF_ONLY']"

    def test_cwd(self, tmp_path: pathlib.Path) -> None:
        """cwd() runs the child in that directory (str or PathLike)."""
        assert child("pwd").cwd(tmp_path).read() == os.path.realpath(tmp_path)
        assert child("pwd").cwd(str(tmp_path)).read() == os.path.realpath(tmp_path)

    def test_cwd_relative_program(self, tmp_path: pathlib.Path) -> None:
        """A relative program path with a slash is found relative to cwd."""
        script = tmp_path / "hello.sh"
        script.write_text("#!/bin/sh\necho relative\n")
        script.chmod(0o755)
        assert Proc("./hello.sh").cwd(tmp_path).read() == "relative"


class TestFds:
    """pass_fds: the passed fd reaches the child, every other extra fd is closed."""

    def test_only_std_fds_by_default(self) -> None:
        """A child sees only 0, 1, 2 (even when the parent has an inheritable fd open)."""
        r, w = os.pipe()
        os.set_inheritable(w, True)
        try:
            assert child("open_fds").read() == "0 1 2"
        finally:
            os.close(r)
            os.close(w)

    def test_fds_behaviour_shows_no_extra(self) -> None:
        """The `fds` behaviour lists 0, 1, 2 and only the fd it used to list them."""
        fds = [int(x) for x in child("fds").read().split()]
        assert fds[:3] == [0, 1, 2]
        assert len(fds) == 4

    def test_pass_fds(self) -> None:
        """A passed fd is open in the child (same pipe), and nothing else extra is."""
        r, w = os.pipe()
        try:
            out = child("open_fds").pass_fds(w).read()
            assert out == f"0 1 2 {w}"
            code = f"import os; os.write({w}, b'through the passed fd')"
            Proc(sys.executable, "-c", code).pass_fds(w).run()
            assert os.read(r, 100) == b"through the passed fd"
        finally:
            os.close(r)
            os.close(w)

    def test_pass_fds_file_object(self) -> None:
        """pass_fds accepts a file object (its fileno)."""
        r, w = os.pipe()
        with open(w, "wb", buffering=0) as fw:
            try:
                assert child("open_fds").pass_fds(fw).read() == f"0 1 2 {w}"
            finally:
                os.close(r)

    def test_pass_fds_stays_open_in_parent(self) -> None:
        """The parent's passed fd is not closed by procflow."""
        r, w = os.pipe()
        try:
            child("exit", 0).pass_fds(r, w).run()
            os.write(w, b"x")
            assert os.read(r, 1) == b"x"
        finally:
            os.close(r)
            os.close(w)


class TestChildSetup:
    """What every child gets: default SIGPIPE, its own process group."""

    def test_sigpipe_default(self) -> None:
        """SIGPIPE is back at its default disposition in the child, though the parent ignores it.

        A Python child ignores SIGPIPE itself at start-up, so ``cat`` reports the
        ignored-signal mask it was exec'd with.
        """
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
        status = Proc("cat", "/proc/self/status").read()
        (line,) = [x for x in status.splitlines() if x.startswith("SigIgn:")]
        mask = int(line.split()[1], 16)
        assert not mask & (1 << (signal.SIGPIPE - 1))

    def test_sigpipe_kills_writer(self) -> None:
        """A child writing into a pipe nobody reads dies of SIGPIPE (as in a shell)."""
        r, w = os.pipe()
        os.close(r)
        try:
            res = Proc("yes").stdout_file(w).unchecked().timeout(20).run()
        finally:
            os.close(w)
        assert res.returncode == -signal.SIGPIPE

    def test_own_process_group(self) -> None:
        """With stdin not a terminal, the child leads a process group of its own."""
        pid, pgid, ppid = (int(x) for x in child("pgid").read().split())
        assert pgid == pid
        assert pgid != os.getpgid(0)
        assert ppid == os.getpid()

    def test_terminal_stdin_stays_in_callers_group(self) -> None:
        """With a terminal as stdin the child stays in the caller's process group (as in a shell)."""
        master, slave = os.openpty()
        try:
            pid, pgid, _ = (int(x) for x in child("pgid").stdin_file(slave).read().split())
        finally:
            os.close(master)
            os.close(slave)
        assert pgid == os.getpgid(0)
        assert pgid != pid


class TestReuse:
    """A Proc is a value: run it many times, from many threads."""

    def test_reused_many_times(self) -> None:
        """The same Proc runs 30 times with identical results."""
        p = Proc("cat").input(b"same input").stdout_capture()
        results = [p.run() for _ in range(30)]
        assert all(r.stdout == b"same input" for r in results)
        assert len({r.pid for r in results}) == 30

    def test_used_from_threads(self) -> None:
        """8 threads run one shared Proc (and variants of it) at once without cross-talk."""
        base = Proc("cat").stdout_capture()
        errors: list[BaseException] = []
        seen: dict[int, list[bytes]] = {}
        barrier = threading.Barrier(8, timeout=10)

        def work(i: int) -> None:
            try:
                barrier.wait()
                mine = base.input(f"thread {i}\n".encode() * 1000)
                out = []
                for _ in range(5):
                    out.append(mine.run().stdout)
                    assert base.run().stdout == b""
                seen[i] = out
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        for i in range(8):
            assert seen[i] == [f"thread {i}\n".encode() * 1000] * 5


class TestTimeout:
    """The direct child's timeout and kill grace (the lifecycle tests cover trees)."""

    def test_timeout_raises_with_partial_output(self) -> None:
        """A timeout stops the child and raises ProcTimeout (a TimeoutError) with the output so far."""
        start = time.monotonic()
        with pytest.raises(ProcTimeout) as info:
            child("sleep_forever").stdout_capture().timeout(0.3).run()
        assert isinstance(info.value, TimeoutError)
        assert info.value.result.stdout == b"ready\n"
        assert info.value.result.returncode == -signal.SIGTERM
        assert time.monotonic() - start < 5

    def test_kill_grace_escalates_to_sigkill(self) -> None:
        """A child ignoring SIGTERM is killed with SIGKILL after the grace."""
        start = time.monotonic()
        with pytest.raises(ProcTimeout) as info:
            child("ignore_sigterm").stdout_capture().timeout(0.5).kill_grace(0.3).run()
        elapsed = time.monotonic() - start
        assert info.value.result.returncode == -signal.SIGKILL
        assert 0.7 <= elapsed < 5

    def test_fast_child_within_timeout(self) -> None:
        """A child that ends before its timeout is not affected."""
        assert child("echo", "quick").timeout(30).read() == "quick"
