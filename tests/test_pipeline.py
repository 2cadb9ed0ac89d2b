"""Pipelines (API.md §2): composition, data flow, builder routing, exit status, failures, streaming."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import structlog
from child import pattern_bytes
from conftest import child

from procflow import ExitError, Pipeline, Proc, ProcTimeout, Result, SpawnError

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SIGPIPE = int(signal.SIGPIPE)

#: A stage that prints the kernel size of the pipe on its stdin, then drains it.
REPORT_PIPE_SIZE = (
    "import fcntl, os, sys\n"
    f"sys.stderr.write(str(fcntl.fcntl(0, {F_GETPIPE_SZ})) + '\\n')\n"
    "while os.read(0, 1 << 16): pass\n"
)


def sh(script: str) -> Proc:
    """A POSIX shell stage."""
    return Proc("sh", "-c", script)


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _own_fd_targets() -> set[str]:
    """What each of this process's fds points to (``pipe:[inode]`` for a pipe)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the fd listdir used, closed since
    return out


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, object]]]:
    """structlog's capture_logs, leaving structlog unconfigured after if it was before.

    (capture_logs() configures structlog for good, which would send every later
    procflow event of the session through structlog's default stdout printer.)
    """
    was_configured = structlog.is_configured()
    with structlog.testing.capture_logs() as logs:
        yield logs
    if not was_configured:
        structlog.reset_defaults()


# ---------------------------------------------------------------------------------- composition
class TestComposition:
    def test_or_makes_a_pipeline(self) -> None:
        """`a | b` is a Pipeline of two stages, and `a` is unchanged."""
        a, b = Proc("echo", "x"), Proc("cat")
        p = a | b
        assert isinstance(p, Pipeline)
        assert len(p.stages) == 2
        assert not isinstance(a, Pipeline) and a.argv == ("echo", "x")

    def test_pipe_method_equals_or(self) -> None:
        """`.pipe()` builds the same pipeline as `|`."""
        a, b, c = Proc("echo", "x"), Proc("cat"), Proc("wc", "-c")
        assert a.pipe(b).pipe(c) == a | b | c
        assert (a.pipe(b).pipe(c)).read() == "2"

    def test_pipeline_or_proc_flattens(self) -> None:
        """Pipeline | Proc has the stages side by side, not nested."""
        p = (Proc("a") | Proc("b")) | Proc("c")
        assert [s.argv for s in p.stages] == [("a",), ("b",), ("c",)]

    def test_proc_or_pipeline_flattens(self) -> None:
        """Proc | Pipeline flattens."""
        p = Proc("a") | (Proc("b") | Proc("c"))
        assert [s.argv for s in p.stages] == [("a",), ("b",), ("c",)]

    def test_pipeline_or_pipeline_flattens(self) -> None:
        """Pipeline | Pipeline flattens into one list of stages."""
        p = (Proc("a") | Proc("b")) | (Proc("c") | Proc("d"))
        assert [s.argv for s in p.stages] == [("a",), ("b",), ("c",), ("d",)]

    def test_flattened_pipeline_runs(self) -> None:
        """A flattened four-stage pipeline runs and every stage has a Result."""
        p = (Proc("printf", "b\\na\\nc\\n") | Proc("sort")) | (Proc("cat") | Proc("tr", "a-z", "A-Z"))
        r = p.stdout_capture().run()
        assert r.stdout == b"A\nB\nC\n"
        assert len(r.stages) == 4

    def test_constructor(self) -> None:
        """Pipeline(a, b, c) equals a | b | c; fewer than two stages is refused."""
        a, b, c = Proc("a"), Proc("b"), Proc("c")
        assert Pipeline(a, b, c) == a | b | c
        with pytest.raises(ValueError):
            Pipeline(a)

    def test_pipe_into_non_command_is_type_error(self) -> None:
        """Piping into something that is not a Proc or Pipeline is a TypeError."""
        with pytest.raises(TypeError):
            Proc("cat").pipe("wc")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Proc("cat") | "wc"  # type: ignore[operator]

    def test_builder_returns_new_pipeline(self) -> None:
        """A builder call on a pipeline leaves the original pipeline unchanged."""
        p = Proc("printf", "x") | Proc("cat")
        q = p.stdout_capture()
        assert q != p
        assert p.run().stdout is None
        assert q.run().stdout == b"x"

    def test_pipeline_reusable(self) -> None:
        """The same pipeline object runs many times."""
        p = (Proc("printf", "abc") | Proc("wc", "-c")).stdout_capture()
        assert [p.run().stdout.strip() for _ in range(3)] == [b"3"] * 3


# ---------------------------------------------------------------------------------- data flow
class TestDataFlow:
    def test_bytes_exact_through_python_stages(self) -> None:
        """A position-dependent 1 MiB pattern crosses two stages byte-exact."""
        n = 1 << 20
        r = (child("pattern", "stdout", n) | child("cat") | child("cat")).stdout_capture().run()
        assert r.stdout == pattern_bytes(n)

    def test_parent_does_not_copy(self) -> None:
        """64 MiB flows child to child: the parent's CPU stays well below what copying it would cost."""
        n = 64 << 20
        p = (Proc("head", "-c", n, "/dev/zero") | Proc("cat") | Proc("cat") | Proc("wc", "-c")).stdout_capture()
        costs = []
        for _ in range(3):
            cpu0 = cpu_self()
            r = p.run()
            costs.append(cpu_self() - cpu0)
            assert int(r.stdout) == n
        # What merely reading the same stream into the parent costs (a copy would also write it).
        cpu0 = cpu_self()
        src = subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE)
        assert src.stdout is not None
        with src.stdout:
            while os.read(src.stdout.fileno(), 1 << 16):
                pass
        src.wait(10)
        read_cost = cpu_self() - cpu0
        assert min(costs) < read_cost / 2, f"parent CPU {costs} s, reading the stream costs {read_cost:.4f} s"

    def test_pipes_handed_child_to_child(self) -> None:
        """Each inter-stage pipe is held by its two stages only: not by the parent, no pump thread."""
        with (Proc("sleep", "30") | Proc("cat") | Proc("cat")).unchecked().start() as running:
            pids = running.pids
            try:
                links = [
                    (os.readlink(f"/proc/{pid}/fd/0"), os.readlink(f"/proc/{pid}/fd/1")) for pid in pids
                ]
                mine = _own_fd_targets()
                pumps = [t.name for t in threading.enumerate() if t.name.startswith(("procflow-feed", "procflow-dr"))]
            finally:
                running.kill()
                running.wait(timeout=10)
        for i in range(2):
            assert links[i][1].startswith("pipe:")
            assert links[i][1] == links[i + 1][0]  # stage i writes the pipe stage i+1 reads
            assert links[i][1] not in mine
        assert pumps == []

    def test_upstream_gets_sigpipe(self) -> None:
        """The parent holds no copy of a pipe: `yes` sees its reader go and dies of SIGPIPE."""
        r = (Proc("yes") | Proc("head", "-n", "3")).stdout_capture().timeout(30).run()
        assert r.stdout == b"y\ny\ny\n"
        assert r.stages[0].returncode == -SIGPIPE

    def test_downstream_gets_eof(self) -> None:
        """The parent holds no write end: the last stage sees EOF when the first exits."""
        r = (Proc("printf", "abc") | Proc("cat") | Proc("wc", "-c")).stdout_capture().timeout(30).run()
        assert r.stdout.strip() == b"3"

    def test_stage_gets_no_extra_fds(self) -> None:
        """A middle stage holds exactly the fds a single command holds (no pipe end leaks into it)."""
        alone = child("fds").stdout_capture().run().stdout
        middle = (Proc("true") | child("fds") | child("cat")).stdout_capture().run().stdout
        last = (Proc("true") | child("cat") | child("fds")).stdout_capture().run().stdout
        assert middle == alone
        assert last == alone


# ---------------------------------------------------------------------------------- builder routing
class TestBuilderRouting:
    def test_input_feeds_first_stage(self, tmp_path: Path) -> None:
        """.input() on a pipeline feeds the first stage."""
        r = (child("cat") | Proc("tr", "a-z", "A-Z")).input(b"hello").stdout_capture().run()
        assert r.stdout == b"HELLO"

    def test_stdin_path_and_file_go_to_first_stage(self, tmp_path: Path) -> None:
        """.stdin_path()/.stdin_file() on a pipeline set the first stage's stdin."""
        f = tmp_path / "in.txt"
        f.write_bytes(b"3\n1\n2\n")
        p = Proc("sort", "-n") | Proc("head", "-n", "2")
        assert p.stdin_path(f).read() == "1\n2"
        with open(f, "rb") as fh:
            assert p.stdin_file(fh).read() == "1\n2"
            assert not fh.closed  # stays the caller's

    def test_stdin_null_on_pipeline(self) -> None:
        """.stdin_null() on a pipeline gives the first stage EOF."""
        assert (Proc("cat") | Proc("wc", "-c")).stdin_null().read() == "0"

    def test_stdout_methods_go_to_last_stage(self, tmp_path: Path) -> None:
        """stdout_capture/stdout_path/stdout_file/stdout_null act on the last stage only."""
        p = Proc("printf", "a\\nb\\n") | Proc("tr", "a-z", "A-Z")
        assert p.stdout_capture().run().stdout == b"A\nB\n"
        out = tmp_path / "out"
        p.stdout_path(out).run()
        assert out.read_bytes() == b"A\nB\n"
        p.stdout_path(out, append=True).run()
        assert out.read_bytes() == b"A\nB\n" * 2
        with open(tmp_path / "f", "wb") as fh:
            p.stdout_file(fh).run()
        assert (tmp_path / "f").read_bytes() == b"A\nB\n"
        r = p.stdout_null().run()
        assert r.stdout is None and r.ok

    def test_stdout_to_stderr_goes_to_last_stage(self) -> None:
        """.stdout_to_stderr() on a pipeline sends the last stage's stdout to its stderr."""
        r = (Proc("printf", "x") | Proc("cat")).stdout_to_stderr().stderr_capture().run()
        assert r.stages[1].stderr == b"x"
        assert r.stages[0].stderr == b""

    def test_stderr_capture_every_stage(self) -> None:
        """.stderr_capture() on a pipeline captures each stage's stderr separately."""
        p = sh("echo one >&2") | sh("cat; echo two >&2") | sh("cat; echo three >&2")
        r = p.stderr_capture().run()
        assert [s.stderr for s in r.stages] == [b"one\n", b"two\n", b"three\n"]
        assert r.stderr == b"one\ntwo\nthree\n"

    def test_stderr_concatenated_in_stage_order_not_arrival(self) -> None:
        """result.stderr is in stage order even when a later stage writes first."""
        p = sh("sleep 0.2; echo first-stage >&2") | sh("echo last-stage >&2; cat >/dev/null")
        r = p.stderr_capture().run()
        assert r.stderr == b"first-stage\nlast-stage\n"

    def test_stderr_path_every_stage(self, tmp_path: Path) -> None:
        """.stderr_path() on a pipeline collects every stage's stderr in the file."""
        f = tmp_path / "err"
        f.write_bytes(b"old content that must go\n")
        (sh("echo one >&2") | sh("cat; echo two >&2")).stderr_path(f).run()
        assert sorted(f.read_bytes().splitlines()) == [b"one", b"two"]

    def test_stderr_null_every_stage(self) -> None:
        """.stderr_null() then a later capture replaces it on every stage."""
        r = (sh("echo a >&2") | sh("echo b >&2")).stderr_null().run()
        assert r.stderr is None and all(s.stderr is None for s in r.stages)

    def test_text_every_stage(self) -> None:
        """.text() on a pipeline: stdout, each stage's stderr and the joined stderr are str; str input works."""
        p = sh("cat; echo é1 >&2") | sh("tr a-z A-Z; echo é2 >&2")
        r = p.input("abc").text().stdout_capture().stderr_capture().run()
        assert r.stdout == "ABC"
        assert [s.stderr for s in r.stages] == ["é1\n", "é2\n"]
        assert r.stderr == "é1\né2\n"

    def test_cwd_every_stage(self, tmp_path: Path) -> None:
        """.cwd() on a pipeline sets every stage's working directory."""
        p = sh("pwd >&2") | sh("cat; pwd >&2") | sh("cat; pwd >&2")
        r = p.cwd(tmp_path).stderr_capture().text().run()
        assert [os.path.realpath(s.stderr.strip()) for s in r.stages] == [os.path.realpath(tmp_path)] * 3

    def test_env_every_stage(self) -> None:
        """.env()/.env_remove() on a pipeline apply to every stage."""
        p = sh('echo "$PF_A" >&2') | sh('cat; echo "$PF_A" >&2')
        r = p.env(PF_A="set").stderr_capture().run()
        assert [s.stderr for s in r.stages] == [b"set\n", b"set\n"]
        r = p.env(PF_A="set").env_remove("PF_A").stderr_capture().run()
        assert [s.stderr for s in r.stages] == [b"\n", b"\n"]

    def test_env_clear_every_stage(self) -> None:
        """.env_clear() on a pipeline empties every stage's environment."""
        p = Proc("/usr/bin/env") | Proc("/bin/sh", "-c", "cat; /usr/bin/env >&2")
        r = p.env_clear().env(ONLY="1").stdout_capture().stderr_capture().run()
        assert r.stdout.split() == [b"ONLY=1"]
        assert b"PATH=" not in r.stages[1].stderr and b"ONLY=1" in r.stages[1].stderr

    def test_pass_fds_every_stage(self) -> None:
        """.pass_fds() on a pipeline keeps the fd open in every stage."""
        r_fd, w_fd = os.pipe()
        try:
            p = Proc("bash", "-c", f"echo s1 >&{w_fd}") | Proc("bash", "-c", f"cat; echo s2 >&{w_fd}")
            p.pass_fds(w_fd).run()
            os.close(w_fd)
            w_fd = -1
            with os.fdopen(r_fd, "rb") as fh:
                r_fd = -1
                assert sorted(fh.read().split()) == [b"s1", b"s2"]
        finally:
            for fd in (r_fd, w_fd):
                if fd >= 0:
                    os.close(fd)

    def test_unchecked_every_stage(self) -> None:
        """.unchecked() on a pipeline: a failing first stage is returned, not raised."""
        r = (Proc("false") | Proc("cat")).unchecked().run()
        assert r.returncode == 1 and not r.ok

    def test_on_stderr_every_stage(self) -> None:
        """.on_stderr() on a pipeline receives every stage's stderr lines."""
        got: list[str] = []
        (sh("echo from-1 >&2") | sh("cat; echo from-2 >&2")).on_stderr(got.append).run()
        assert sorted(got) == ["from-1", "from-2"]

    def test_on_stdout_last_stage(self) -> None:
        """.on_stdout() on a pipeline receives the last stage's lines."""
        got: list[str] = []
        (Proc("printf", "a\\nb\\n") | Proc("tr", "a-z", "A-Z")).on_stdout(got.append).run()
        assert got == ["A", "B"]

    def test_kill_grace_every_stage(self) -> None:
        """.kill_grace() on a pipeline bounds the stop of a stage that ignores SIGTERM."""
        with (child("ignore_sigterm") | child("cat")).kill_grace(0.2).lines() as lines:
            assert next(lines) == "ready"
            t0 = time.monotonic()
            lines.close()
            elapsed = time.monotonic() - t0
        assert elapsed < 1.5, elapsed  # the default grace (2 s) would apply otherwise
        assert lines.result is not None
        assert lines.result.stages[0].returncode == -signal.SIGKILL

    def test_wait_delay_every_stage(self) -> None:
        """.wait_delay() on a pipeline bounds the wait for a first stage's stderr held by a grandchild."""
        p = sh("sleep 30 >/dev/null & echo $!") | Proc("cat")
        with capture_logs() as logs:
            t0 = time.monotonic()
            r = p.wait_delay(0.2).stderr_capture().stdout_capture().run()
            elapsed = time.monotonic() - t0
        grandchild = int(r.stdout)
        try:
            held = [e for e in logs if e["event"] == "pipe.held_open"]
            assert held and held[0]["wait_delay"] == 0.2
            assert grandchild in held[0]["holders"]
            assert elapsed < 0.9  # not the default 1 s
        finally:
            os.kill(grandchild, signal.SIGKILL)

    def test_per_stage_settings_are_kept(self) -> None:
        """Settings made on a Proc before piping survive, and pipeline-wide ones add to them."""
        a = sh('echo "a:$PF_X:$PF_Y" >&2').env(PF_X="1").stderr_capture()
        b = sh('cat; echo "b:$PF_X:$PF_Y" >&2').env(PF_X="2")
        r = (a | b).env(PF_Y="y").run()
        assert r.stages[0].stderr == b"a:1:y\n"
        assert r.stages[1].stderr is None  # b's stderr was not captured: only a's setting was per-stage

    def test_per_stage_unchecked_kept(self) -> None:
        """A stage marked unchecked before piping: its failure is returned, a checked one's raised."""
        r = (Proc("false").unchecked() | Proc("cat").unchecked()).run()
        assert r.returncode == 1
        with pytest.raises(ExitError):
            (Proc("true") | Proc("false")).run()

    def test_per_stage_text_kept(self) -> None:
        """A stage with .text() keeps str stderr while the other's stays bytes; the joined stderr is text."""
        r = (sh("echo a >&2").text() | sh("cat; echo b >&2")).stderr_capture().run()
        assert r.stages[0].stderr == "a\n"
        assert r.stages[1].stderr == b"b\n"
        assert r.stderr == "a\nb\n"

    def test_per_stage_stdin_input_kept(self) -> None:
        """.input() on the first Proc before piping feeds the pipeline."""
        r = (child("cat").input(b"xyz") | Proc("wc", "-c")).stdout_capture().run()
        assert r.stdout.strip() == b"3"

    def test_per_stage_stdout_capture_on_last_kept(self) -> None:
        """.stdout_capture() on the last Proc before piping captures the pipeline's output."""
        r = (Proc("printf", "q") | Proc("cat").stdout_capture()).run()
        assert r.stdout == b"q"


class TestPipeIntoRedirected:
    @pytest.mark.parametrize(
        "left",
        [
            Proc("echo").stdout_capture(),
            Proc("echo").stdout_path("/dev/null"),
            Proc("echo").stdout_null(),
            Proc("echo").stdout_file(1),
            Proc("echo").stdout_to_stderr(),
            Proc("echo").on_stdout(print),
        ],
        ids=["capture", "path", "null", "file", "to_stderr", "on_stdout"],
    )
    def test_pipe_from_redirected_stdout(self, left: Proc) -> None:
        """Piping from a stage whose stdout is set raises ValueError at the `|`."""
        with pytest.raises(ValueError, match="stdout"):
            left | Proc("cat")
        with pytest.raises(ValueError, match="stdout"):
            left.pipe(Proc("cat"))

    @pytest.mark.parametrize(
        "right",
        [
            Proc("cat").input(b"x"),
            Proc("cat").stdin_path("/dev/null"),
            Proc("cat").stdin_null(),
            Proc("cat").stdin_inherit(),
            Proc("cat").stdin_file(0),
        ],
        ids=["input", "path", "null", "inherit", "file"],
    )
    def test_pipe_into_set_stdin(self, right: Proc) -> None:
        """Piping into a stage whose stdin is set raises ValueError at the `|`."""
        with pytest.raises(ValueError, match="stdin"):
            Proc("echo") | right

    def test_pipeline_ends_checked_too(self) -> None:
        """The same checks apply to a pipeline's last and first stages."""
        with pytest.raises(ValueError):
            (Proc("a") | Proc("b")).stdout_capture() | Proc("c")
        with pytest.raises(ValueError):
            Proc("a") | (Proc("b") | Proc("c")).input(b"x")

    def test_stderr_settings_do_not_block_piping(self) -> None:
        """stderr settings and per-stage env are not a redirection of stdout."""
        p = Proc("printf", "ok").stderr_capture().env(A="1") | Proc("cat")
        assert p.read() == "ok"


# ---------------------------------------------------------------------------------- exit status
class TestExitStatus:
    def test_yes_head_succeeds_every_time(self) -> None:
        """`yes | head -1` succeeds run after run, whichever exit is seen first."""
        p = (Proc("yes") | Proc("head", "-n", "1")).stdout_capture().timeout(30)
        for _ in range(60):
            r = p.run()
            assert r.ok and r.returncode == 0 and r.stdout == b"y\n"
            assert r.stages[0].returncode == -SIGPIPE

    def test_shell_reported_sigpipe_upstream_succeeds(self) -> None:
        """An upstream shell reporting 128+SIGPIPE is not a failure either."""
        r = (sh("yes; exit $?") | Proc("head", "-n", "1")).stdout_capture().run()
        assert r.stages[0].returncode == 128 + SIGPIPE
        assert r.ok

    def test_sigpipe_in_last_stage_fails(self) -> None:
        """The last stage dying of SIGPIPE is a failure."""
        with pytest.raises(ExitError, match="SIGPIPE") as info:
            (Proc("true") | sh("kill -PIPE $$")).run()
        assert info.value.result.returncode == -SIGPIPE

    def test_non_last_failure_fails_pipeline(self) -> None:
        """A failing first stage fails the pipeline even though the last one succeeded."""
        with pytest.raises(ExitError) as info:
            (Proc("false") | Proc("cat")).run()
        r = info.value.result
        assert r.returncode == 1
        assert [s.returncode for s in r.stages] == [1, 0]
        assert not r.ok

    def test_non_last_killed_fails_pipeline(self) -> None:
        """A stage killed by a signal other than SIGPIPE fails the pipeline."""
        with pytest.raises(ExitError, match="SIGTERM") as info:
            (sh("kill -TERM $$") | Proc("cat")).run()
        assert info.value.result.returncode == -signal.SIGTERM

    def test_rightmost_failure_wins(self) -> None:
        """returncode is the rightmost failing stage's."""
        r = (sh("exit 3") | sh("cat; exit 4") | Proc("cat")).unchecked().run()
        assert r.returncode == 4
        r = (sh("exit 3") | Proc("cat") | sh("cat; exit 5")).unchecked().run()
        assert r.returncode == 5
        r = (sh("exit 3") | Proc("cat") | Proc("cat")).unchecked().run()
        assert r.returncode == 3

    def test_stages_hold_each_result(self) -> None:
        """result.stages has each stage's pid, returncode and argv; the pipeline's are the last's."""
        r = (Proc("printf", "x") | sh("cat; exit 2") | Proc("cat")).unchecked().run()
        assert [s.argv for s in r.stages] == [("printf", "x"), ("sh", "-c", "cat; exit 2"), ("cat",)]
        assert [s.returncode for s in r.stages] == [0, 2, 0]
        pids = [s.pid for s in r.stages]
        assert len(set(pids)) == 3 and all(p > 0 for p in pids)
        assert r.pid == pids[-1] and r.argv == ("cat",)
        assert all(isinstance(s, Result) and s.duration >= 0 for s in r.stages)

    def test_all_ok(self) -> None:
        """A pipeline where every stage exits 0 is ok with returncode 0."""
        r = (Proc("true") | Proc("true") | Proc("true")).run()
        assert r.ok and r.returncode == 0 and [s.returncode for s in r.stages] == [0, 0, 0]
        assert r.check() is r

    def test_exit_error_names_stage_status_and_stderr(self) -> None:
        """ExitError names the failing stage ("stage 2 of 3"), its status and its stderr tail."""
        p = sh("echo noise-from-1 >&2") | sh("cat; echo boom-line >&2; exit 4") | Proc("cat")
        with pytest.raises(ExitError) as info:
            p.stderr_capture().run()
        msg = str(info.value)
        assert "stage 2 of 3" in msg
        assert "exited with status 4" in msg
        assert "boom-line" in msg
        assert "cat; echo boom-line" in msg  # the command
        assert "noise-from-1" not in msg  # the tail is the failing stage's own
        assert info.value.result.stderr == b"noise-from-1\nboom-line\n"

    def test_exit_error_names_signal(self) -> None:
        """A stage killed by a signal is named with the signal."""
        with pytest.raises(ExitError, match=r"stage 1 of 2.*SIGKILL"):
            (sh("kill -KILL $$") | Proc("cat")).run()

    def test_check_raises_like_run(self) -> None:
        """result.check() of an unchecked failed pipeline raises the same stage in ExitError."""
        r = (sh("exit 7") | Proc("cat")).unchecked().run()
        with pytest.raises(ExitError, match="stage 1 of 2"):
            r.check()

    def test_unchecked_rightmost_failure_returns(self) -> None:
        """A checked failure left of an unchecked rightmost failure: the rightmost decides, no raise."""
        r = (Proc("false") | sh("cat; exit 6").unchecked()).run()
        assert r.returncode == 6 and not r.ok

    def test_checked_rightmost_failure_raises(self) -> None:
        """An unchecked failing stage left of a checked failing one: ExitError for the rightmost."""
        with pytest.raises(ExitError, match="stage 2 of 2") as info:
            (Proc("false").unchecked() | sh("cat; exit 6")).run()
        assert info.value.result.returncode == 6


# ---------------------------------------------------------------------------------- spawn failures
def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


class TestSpawnFailure:
    def test_last_stage_not_found(self) -> None:
        """Last program missing: SpawnError names it; the running first stage is stopped and reaped."""
        before = _children()
        with pytest.raises(SpawnError, match="no-such-prog-pf1") as info:
            (child("sleep_forever") | Proc("no-such-prog-pf1")).run()
        assert info.value.argv == ("no-such-prog-pf1",)
        assert isinstance(info.value.__cause__, OSError)
        assert _children() == before

    def test_middle_stage_not_found(self) -> None:
        """Middle program missing: SpawnError; the started first stage is stopped, nothing left open."""
        before = _children()
        with pytest.raises(SpawnError, match="no-such-prog-pf2"):
            (Proc("yes") | Proc("no-such-prog-pf2") | Proc("cat")).run()
        assert _children() == before

    def test_stop_event_names_a_started_stage(self) -> None:
        """The proc.kill event of a spawn failure names a stage that was started (a real pid)."""
        with capture_logs() as logs, pytest.raises(SpawnError):
            (Proc("yes") | Proc("no-such-prog-pf5") | Proc("cat")).run()
        kills = [e for e in logs if e["event"] == "proc.kill"]
        assert kills and all(e["pid"] > 0 and e["argv"] == ["yes"] for e in kills)

    def test_not_found_with_pumps_started(self) -> None:
        """A spawn failure after feeder and drainer threads started still stops and joins them."""

        def endless() -> Iterator[bytes]:
            while True:
                yield b"x" * 4096

        before = _children()
        p = child("cat") | child("cat") | Proc("no-such-prog-pf3")
        with pytest.raises(SpawnError, match="no-such-prog-pf3"):
            p.input(endless()).stderr_capture().run()
        assert _children() == before

    def test_not_found_while_streaming(self) -> None:
        """lines()/writer() on a pipeline with a missing stage raise SpawnError and leave nothing."""
        with pytest.raises(SpawnError):
            (Proc("yes") | Proc("no-such-prog-pf4")).lines()
        with pytest.raises(SpawnError):
            (child("cat") | Proc("no-such-prog-pf4")).writer()

    def test_bad_cwd_in_one_stage(self, tmp_path: Path) -> None:
        """A stage with a missing cwd: SpawnError naming it, nothing started."""
        missing = tmp_path / "gone"
        before = _children()
        with pytest.raises(SpawnError, match="gone"):
            (Proc("yes") | Proc("cat").cwd(missing)).run()
        assert _children() == before


# ---------------------------------------------------------------------------------- timeout, groups
class TestTimeoutAndGroups:
    def test_timeout_stops_every_stage(self) -> None:
        """A pipeline timeout stops all stages: ProcTimeout, each returncode negative."""
        t0 = time.monotonic()
        with pytest.raises(ProcTimeout) as info:
            (Proc("yes") | Proc("sleep", "30") | Proc("cat")).timeout(0.5).run()
        assert time.monotonic() - t0 < 10
        assert isinstance(info.value, TimeoutError)
        codes = [s.returncode for s in info.value.result.stages]
        assert all(c < 0 for c in codes), codes

    def test_smallest_stage_timeout_applies(self) -> None:
        """The pipeline's deadline is the smallest timeout of its stages."""
        t0 = time.monotonic()
        with pytest.raises(ProcTimeout):
            (Proc("sleep", "30").timeout(60) | Proc("sleep", "30").timeout(0.3)).run()
        assert time.monotonic() - t0 < 10

    def test_timeout_keeps_output_so_far(self) -> None:
        """ProcTimeout's result keeps what the last stage wrote before the stop."""
        p = sh("echo early; exec sleep 30") | Proc("cat")
        with pytest.raises(ProcTimeout) as info:
            p.timeout(1.0).stdout_capture().run()
        assert info.value.result.stdout == b"early\n"

    def test_one_process_group(self) -> None:
        """All stages share one process group, the first stage's pid, not the test's group."""
        p = (Proc("sleep", "30") | Proc("sleep", "30") | Proc("sleep", "30")).unchecked()
        with p.start() as running:
            pids = running.pids
            groups = {os.getpgid(pid) for pid in pids}
            running.kill()
            r = running.wait(timeout=10)
        assert groups == {pids[0]}
        assert pids[0] != os.getpgrp()
        assert [s.pid for s in r.stages] == list(pids)

    def test_terminate_stops_every_stage(self) -> None:
        """Running.terminate() on a pipeline stops every stage."""
        with (Proc("sleep", "30") | Proc("sleep", "30")).unchecked().start() as running:
            running.terminate()
            r = running.wait(timeout=10)
        assert [s.returncode for s in r.stages] == [-signal.SIGTERM] * 2


# ---------------------------------------------------------------------------------- streaming
class TestStreaming:
    def test_lines(self) -> None:
        """lines() on a pipeline yields the last stage's lines."""
        p = Proc("printf", "b\\na\\nc\\n") | Proc("sort") | Proc("cat")
        with p.lines() as lines:
            assert list(lines) == ["a", "b", "c"]

    def test_lines_failure_raises_at_end(self) -> None:
        """lines(): a failing non-last stage raises ExitError at the end, after the lines."""
        got = []
        with (
            pytest.raises(ExitError, match="stage 1 of 2"),
            (sh("echo a; echo b; exit 3") | Proc("cat")).lines() as lines,
        ):
            for line in lines:
                got.append(line)
        assert got == ["a", "b"]

    def test_lines_early_close_stops_every_stage(self) -> None:
        """Closing lines() early on an endless pipeline stops and reaps every stage."""
        with (Proc("yes") | Proc("cat") | Proc("cat")).lines() as lines:
            assert [next(lines) for _ in range(3)] == ["y"] * 3
        r = lines.result
        assert r is not None and all(s.returncode != 0 for s in r.stages)

    def test_reader(self) -> None:
        """reader() on a pipeline gives the last stage's bytes exactly."""
        n = 300_000
        with (child("pattern", "stdout", n) | child("cat")).reader() as f:
            data = f.read()
        assert data == pattern_bytes(n)

    def test_reader_close_early(self) -> None:
        """reader().close() before EOF stops the whole pipeline."""
        with (Proc("yes") | Proc("cat")).reader() as f:
            assert f.read(4) == b"y\ny\n"
        assert f.result is not None

    def test_writer_gzip_roundtrip(self) -> None:
        """writer() feeds `gzip | gzip -d`; the captured output equals what was written."""
        data = pattern_bytes(3 << 20)
        p = (Proc("gzip", "-1") | Proc("gzip", "-d")).stdout_capture()
        with p.writer() as w:
            for i in range(0, len(data), 100_000):
                w.write(data[i : i + 100_000])
        assert w.result is not None
        assert w.result.stdout == data
        assert [s.returncode for s in w.result.stages] == [0, 0]

    def test_writer_failure_raises(self) -> None:
        """writer() on a pipeline with a failing stage raises ExitError on close."""
        with (
            pytest.raises(ExitError, match="stage 2 of 2"),
            (child("cat") | sh("cat >/dev/null; exit 9")).writer() as w,
        ):
            w.write(b"abc")

    def test_chunks(self) -> None:
        """chunks() on a pipeline: the joined chunks equal the stream."""
        n = 500_000
        with (child("pattern", "stdout", n) | Proc("cat")).chunks() as chunks:
            data = b"".join(chunks)
        assert data == pattern_bytes(n)

    def test_callbacks_chunks(self) -> None:
        """on_stdout(lines=False) on a pipeline receives the last stage's bytes as chunks."""
        got: list[bytes] = []
        n = 200_000
        (child("pattern", "stdout", n) | child("cat")).on_stdout(got.append, lines=False).run()
        assert b"".join(got) == pattern_bytes(n)

    def test_callback_error_stops_pipeline(self) -> None:
        """An exception from a callback stops every stage and is re-raised."""

        def boom(line: str) -> None:
            raise RuntimeError("callback failed")

        with pytest.raises(RuntimeError, match="callback failed"):
            (Proc("yes") | Proc("cat")).on_stdout(boom).run()

    def test_generator_input(self) -> None:
        """A generator given to .input() of a pipeline feeds its first stage."""

        def gen() -> Iterator[bytes]:
            for i in range(2000):
                yield f"{i}\n".encode()

        out = (child("cat") | Proc("wc", "-l")).input(gen()).read()
        assert out == "2000"

    def test_generator_input_str_with_text(self) -> None:
        """str chunks with .text() on a pipeline are encoded with its encoding."""
        r = (Proc("cat") | Proc("cat")).input(iter(["é", "ü\n"])).text("latin-1").stdout_capture().run()
        assert r.stdout == "éü\n"

    def test_read(self) -> None:
        """.read() on a pipeline strips trailing newlines like $(...)."""
        assert (Proc("printf", "x\\n\\n") | Proc("cat")).read() == "x"

    def test_text_stdout(self) -> None:
        """.text() on a pipeline decodes the captured stdout."""
        r = (Proc("printf", "\\303\\251") | Proc("cat")).text().stdout_capture().run()
        assert r.stdout == "é"

    def test_stdout_path(self, tmp_path: Path) -> None:
        """stdout_path on a pipeline writes the last stage's output straight to the file."""
        out = tmp_path / "o.bin"
        n = 1 << 20
        (child("pattern", "stdout", n) | Proc("cat")).stdout_path(out).run()
        assert out.read_bytes() == pattern_bytes(n)


# ---------------------------------------------------------------------------------- pipe size
def _expected_pipe_size(size: int) -> tuple[int, int]:
    """(default size, the size the kernel grants us for ``size``) on a fresh pipe."""
    r, w = os.pipe()
    try:
        default = fcntl.fcntl(w, F_GETPIPE_SZ)
        try:
            top = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        except OSError:
            top = size
        try:
            granted = fcntl.fcntl(w, F_SETPIPE_SZ, min(size, top))
        except OSError:
            granted = default
        return default, granted
    finally:
        os.close(r)
        os.close(w)


class TestPipeSize:
    def test_pipe_size_sets_the_inter_stage_pipe(self) -> None:
        """.pipe_size(1 MiB) on a pipeline: the next stage sees a pipe of the granted size."""
        default, granted = _expected_pipe_size(1 << 20)
        p = Proc("true") | Proc(sys.executable, "-c", REPORT_PIPE_SIZE)
        assert int(p.pipe_size(1 << 20).stderr_capture().run().stderr) == granted
        assert int(p.stderr_capture().run().stderr) == default

    def test_pipe_size_on_a_stage(self) -> None:
        """.pipe_size() on a Proc before piping sizes its outgoing pipe."""
        _, granted = _expected_pipe_size(1 << 20)
        p = Proc("true").pipe_size(1 << 20) | Proc(sys.executable, "-c", REPORT_PIPE_SIZE).stderr_capture()
        assert int(p.run().stderr) == granted

    def test_pipe_size_data_exact(self) -> None:
        """With 1 MiB pipes the data still crosses three stages byte-exact."""
        n = 3 << 20
        r = (child("pattern", "stdout", n) | Proc("cat") | Proc("cat")).pipe_size(1 << 20).stdout_capture().run()
        assert r.stdout == pattern_bytes(n)

    def test_pipe_size_bad_values(self) -> None:
        """pipe_size() refuses non-int and non-positive sizes at the builder."""
        p = Proc("a") | Proc("b")
        with pytest.raises(TypeError):
            p.pipe_size(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            p.pipe_size(0)
