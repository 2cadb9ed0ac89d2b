"""Errors: the exception tree, SpawnError's diagnosis, ExitError's message, Secret redaction."""

from __future__ import annotations

import errno
import os
import pathlib
import pickle
import signal
import sys
import traceback

import pytest
from conftest import child

import procflow
from procflow import (
    Cancelled,
    ExitError,
    OutputLimitExceeded,
    Proc,
    ProcError,
    ProcTimeout,
    Result,
    Secret,
    SpawnError,
)


class TestTree:
    """The exception classes form the tree of API.md §3."""

    @pytest.mark.parametrize("cls", [SpawnError, ExitError, ProcTimeout, Cancelled, OutputLimitExceeded])
    def test_all_are_proc_errors(self, cls: type[Exception]) -> None:
        """Every procflow error is a ProcError (one except clause catches them all)."""
        assert issubclass(cls, ProcError)
        assert issubclass(ProcError, Exception)

    def test_proc_timeout_is_timeout_error(self) -> None:
        """ProcTimeout is also the builtin TimeoutError."""
        assert issubclass(ProcTimeout, TimeoutError)

    def test_exported(self) -> None:
        """The errors are importable from the top-level package and listed in __all__."""
        for name in ("ProcError", "SpawnError", "ExitError", "ProcTimeout", "Cancelled", "OutputLimitExceeded"):
            assert name in procflow.__all__
            assert getattr(procflow, name).__module__.startswith("procflow")

    def test_exit_error_carries_result(self) -> None:
        """ExitError.result is the Result of the failed run, with its captured output."""
        with pytest.raises(ExitError) as info:
            child("stderr_lines", 2, 7).stdout_capture().stderr_capture().run()
        r = info.value.result
        assert isinstance(r, Result)
        assert r.returncode == 7
        assert r.stdout == b""
        assert r.stderr == b"err line 0\nerr line 1\n"

    def test_timeout_carries_result(self) -> None:
        """ProcTimeout.result holds the output captured before the timeout."""
        with pytest.raises(TimeoutError) as info:
            child("sleep_forever").stdout_capture().timeout(0.3).run()
        assert isinstance(info.value, ProcTimeout)
        assert info.value.result.stdout == b"ready\n"

    @pytest.mark.parametrize("stream", ["stdout", "stderr"])
    def test_output_limit_names_the_stream(self, stream: str) -> None:
        """OutputLimitExceeded names the stream that passed its max_bytes, and keeps at most max_bytes."""
        p = child("write", stream, 1 << 20)
        p = p.stdout_capture(max_bytes=1000) if stream == "stdout" else p.stderr_capture(max_bytes=1000)
        with pytest.raises(OutputLimitExceeded) as info:
            p.run()
        err = info.value
        assert err.stream == stream
        assert stream in str(err)
        captured = getattr(err.result, stream)
        assert captured is not None
        assert len(captured) <= 1000

    def test_exit_error_pickles(self) -> None:
        """An ExitError survives pickling (e.g. across a process pool) with its message."""
        with pytest.raises(ExitError) as info:
            child("exit", 3).run()
        again = pickle.loads(pickle.dumps(info.value))
        assert str(again) == str(info.value)
        assert again.result.returncode == 3


class TestSpawnError:
    """SpawnError tells a missing program from a bad cwd from permission denied."""

    def test_missing_program_names_it_and_the_path(self) -> None:
        """A missing program is named, and so is the PATH that was searched."""
        with pytest.raises(SpawnError) as info:
            Proc("no-such-program-xyz", "arg").env(PATH="/pf-a:/pf-b").run()
        msg = str(info.value)
        assert "no-such-program-xyz" in msg
        assert "/pf-a:/pf-b" in msg
        assert "not found" in msg
        assert info.value.errno == errno.ENOENT
        assert info.value.argv == ("no-such-program-xyz", "arg")
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOENT

    def test_missing_program_uses_parent_path(self) -> None:
        """Without an env change the parent's PATH is the one reported."""
        with pytest.raises(SpawnError) as info:
            Proc("no-such-program-xyz").run()
        assert os.environ["PATH"] in str(info.value)

    def test_missing_program_with_slash(self, tmp_path: pathlib.Path) -> None:
        """A missing program given as a path is named (no PATH search is claimed)."""
        missing = tmp_path / "nothere"
        with pytest.raises(SpawnError) as info:
            Proc(missing).run()
        assert str(missing) in str(info.value)
        assert "PATH" not in str(info.value)
        assert info.value.errno == errno.ENOENT

    def test_missing_cwd_names_the_cwd(self, tmp_path: pathlib.Path) -> None:
        """A missing cwd is named as the cwd; the (existing) program is not blamed."""
        bad = tmp_path / "no-such-dir"
        with pytest.raises(SpawnError) as info:
            Proc("true").cwd(bad).run()
        msg = str(info.value)
        assert str(bad) in msg
        assert "director" in msg
        assert "command not found" not in msg
        assert "program not found" not in msg
        assert info.value.errno == errno.ENOENT
        assert isinstance(info.value.__cause__, OSError)

    def test_cwd_is_a_file(self, tmp_path: pathlib.Path) -> None:
        """A cwd that is a file is named, with ENOTDIR."""
        f = tmp_path / "file"
        f.write_text("")
        with pytest.raises(SpawnError) as info:
            Proc("true").cwd(f).run()
        assert str(f) in str(info.value)
        assert info.value.errno == errno.ENOTDIR

    def test_permission_denied(self, tmp_path: pathlib.Path) -> None:
        """A file without the execute bit gives a permission-denied SpawnError naming it."""
        script = tmp_path / "not-executable"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o644)
        with pytest.raises(SpawnError) as info:
            Proc(script).run()
        msg = str(info.value)
        assert "permission denied" in msg.lower()
        assert str(script) in msg
        assert info.value.errno == errno.EACCES
        assert isinstance(info.value.__cause__, PermissionError)

    def test_directory_as_program(self, tmp_path: pathlib.Path) -> None:
        """A directory given as the program is a SpawnError, not a crash."""
        with pytest.raises(SpawnError) as info:
            Proc(tmp_path).run()
        assert str(tmp_path) in str(info.value)

    def test_no_shebang(self, tmp_path: pathlib.Path) -> None:
        """An executable text file without #! says it is not an executable format."""
        script = tmp_path / "noshebang"
        script.write_text("echo hi\n")
        script.chmod(0o755)
        with pytest.raises(SpawnError) as info:
            Proc(script).run()
        assert info.value.errno == errno.ENOEXEC
        assert str(script) in str(info.value)

    def test_spawn_error_from_start(self) -> None:
        """start() raises SpawnError at once, and read() does too."""
        with pytest.raises(SpawnError):
            Proc("no-such-program-xyz").start()
        with pytest.raises(SpawnError):
            Proc("no-such-program-xyz").stdout_capture().input(b"x" * 100000).read()

    def test_spawn_error_is_an_oserror_too(self) -> None:
        """SpawnError can be caught as the OSError it wraps."""
        with pytest.raises(OSError):
            Proc("no-such-program-xyz").run()


class TestExitErrorMessage:
    """str(ExitError): quoted command, status or signal name, stderr tail."""

    def test_shell_quoted_command(self) -> None:
        """The command is shell-quoted: an argument with a space shows quoted."""
        with pytest.raises(ExitError) as info:
            Proc("sh", "-c", "exit 3", "arg with space").run()
        msg = str(info.value)
        assert "sh -c 'exit 3' 'arg with space'" in msg
        assert "exited with status 3" in msg

    def test_quoting_special_characters(self) -> None:
        """Quotes, dollars and empty arguments are quoted so the line can be pasted into a shell."""
        with pytest.raises(ExitError) as info:
            Proc("sh", "-c", "exit 1", "it's", "$HOME", "").run()
        assert """'it'"'"'s' '$HOME' ''""" in str(info.value)

    @pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")])
    def test_signal_name(self, sig: int, name: str) -> None:
        """A child killed by a signal is reported by the signal's name, not a negative number."""
        with pytest.raises(ExitError) as info:
            child("kill_self", int(sig)).run()
        msg = str(info.value)
        assert f"killed by {name}" in msg
        assert f"-{int(sig)}" not in msg
        assert "exited with status" not in msg
        assert info.value.result.returncode == -sig

    def test_stderr_tail(self) -> None:
        """The last lines of captured stderr appear; the early ones do not."""
        with pytest.raises(ExitError) as info:
            child("stderr_lines", 1000, 2).stderr_capture().run()
        msg = str(info.value)
        assert "err line 999" in msg
        assert "err line 995" in msg
        assert "err line 0\n" not in msg
        assert "err line 500" not in msg
        assert msg.count("err line") <= 20
        assert len(msg) < 5000

    def test_no_stderr_when_not_captured(self) -> None:
        """Without a stderr capture the message has the command and status only."""
        with pytest.raises(ExitError) as info:
            child("stderr_lines", 3, 2).stderr_null().run()
        assert "err line" not in str(info.value)
        assert "exited with status 2" in str(info.value)

    def test_text_mode_stderr_tail(self) -> None:
        """The stderr tail works on str captures too."""
        with pytest.raises(ExitError) as info:
            child("stderr_lines", 30, 1).stderr_capture().text().run()
        assert "err line 29" in str(info.value)

    def test_long_single_line_bounded(self) -> None:
        """A huge single stderr line is cut: the message stays bounded."""
        code = "import sys; sys.stderr.write('x' * 1000000 + 'THE-END'); sys.exit(1)"
        with pytest.raises(ExitError) as info:
            Proc(sys.executable, "-c", code).stderr_capture().run()
        msg = str(info.value)
        assert "THE-END" in msg
        assert len(msg) < 10000


class TestSecret:
    """Secret argv items are shown as *** in errors and reprs, while the child gets the value."""

    def test_exit_error(self) -> None:
        """str(ExitError) and its result's argv show *** for a Secret."""
        with pytest.raises(ExitError) as info:
            Proc("sh", "-c", 'echo "got $0" >&2; exit 1', Secret("hunter2")).stderr_capture().run()
        msg = str(info.value)
        assert "***" in msg
        assert "hunter2" not in msg.split("stderr")[0]
        assert info.value.result.argv[-1] == "***"
        # The child did get the real value (it echoed it to stderr).
        assert b"got hunter2" in info.value.result.stderr

    def test_repr_of_proc(self) -> None:
        """repr(Proc) shows *** and never the value."""
        p = Proc("curl", "-H", Secret("Authorization: Bearer abc"))
        assert "Bearer" not in repr(p)
        assert "***" in repr(p)
        assert "abc" not in str(p.argv)

    def test_spawn_error(self) -> None:
        """SpawnError's message and argv show *** for a Secret argument."""
        with pytest.raises(SpawnError) as info:
            Proc("no-such-program-xyz", Secret("hunter2")).run()
        assert "hunter2" not in str(info.value)
        assert info.value.argv == ("no-such-program-xyz", "***")

    def test_secret_program(self) -> None:
        """A Secret program name is hidden from the SpawnError message and the formatted traceback."""
        with pytest.raises(SpawnError) as info:
            # Built from parts so the traceback's source line does not contain the value.
            Proc(Secret("/secret/" + "hun" + "ter2-tool")).run()
        assert "hunter2" not in str(info.value)
        assert info.value.argv == ("***",)
        assert "hunter2" not in str(info.value.__cause__)
        assert "hunter2" not in "".join(traceback.format_exception(info.value))

    def test_timeout_message(self) -> None:
        """ProcTimeout's message hides Secret arguments too."""
        with pytest.raises(ProcTimeout) as info:
            Proc(sys.executable, "-c", "import time; time.sleep(60)", Secret("hunter2")).timeout(0.3).run()
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(info.value.result)
