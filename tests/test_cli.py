"""``procflow run``: the command line, run as a user runs it (a separate process).

Both launchers are exercised: the ``procflow`` script the package installs and
``python -m procflow``. The CLI is driven with plain ``subprocess`` so that a
bug in procflow cannot hide a bug in its own command line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

SCRIPT = str(Path(sys.executable).with_name("procflow"))
LAUNCHERS = {"script": [SCRIPT], "module": [sys.executable, "-m", "procflow"]}
TIMEOUT = 30.0


@pytest.fixture(params=sorted(LAUNCHERS))
def launcher(request: pytest.FixtureRequest) -> list[str]:
    """The command that starts procflow's CLI (installed script, or ``python -m``)."""
    return LAUNCHERS[request.param]


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """SIGINT handled here, so that the children start with it at its default.

    A test runner started in the background (``cmd &`` in a script, nohup) has
    SIGINT ignored, and an ignored signal stays ignored across exec: procflow
    and its children would then rightly ignore the Ctrl-C these tests send.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cli(
    *args: str,
    launcher: Sequence[str] = LAUNCHERS["script"],
    input: bytes | None = None,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run procflow's CLI to the end, with stdin, stdout and stderr as pipes."""
    return subprocess.run(
        [*launcher, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def gone(pid: int) -> bool:
    """True when ``pid`` is no longer a running process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def unique_seconds() -> str:
    """A sleep length no other process uses: finds our sleeps even when test runs overlap."""
    return f"{60 + random.random():.9f}"


def running_with(arg: str) -> list[int]:
    """Pids of live processes whose command line contains ``arg``."""
    pids = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if arg in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            pids.append(p.pid)
    return pids


class TestRun:
    """One command or a pipeline, with the streams passed through untouched."""

    def test_single_command(self, launcher: list[str]) -> None:
        """A command's stdout reaches ours; a clean run prints nothing else anywhere."""
        r = cli("run", "--", "echo", "hello", launcher=launcher)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"hello\n", b"")

    def test_pipeline_with_quoted_bar(self, launcher: list[str]) -> None:
        """A quoted '|' separates the stages of a pipeline."""
        r = cli("run", "--", "printf", "b\\na\\n", "|", "sort", "|", "tr", "a-z", "A-Z", launcher=launcher)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"A\nB\n", b"")

    def test_stdin_passes_through(self, launcher: list[str]) -> None:
        """Our stdin is the first stage's stdin."""
        r = cli("run", "--", "cat", "|", "wc", "-c", input=b"12345", launcher=launcher)
        assert r.returncode == 0
        assert r.stdout.strip() == b"5"

    def test_stderr_passes_through(self) -> None:
        """The child's stderr reaches ours, separately from its stdout."""
        r = cli("run", "--", "sh", "-c", "echo out; echo err >&2")
        assert (r.stdout, r.stderr) == (b"out\n", b"err\n")

    def test_binary_data_unchanged(self) -> None:
        """A MiB of arbitrary bytes goes through a pipeline byte for byte."""
        data = os.urandom(1 << 20)
        r = cli("run", "--", "cat", "|", "cat", input=data)
        assert r.returncode == 0
        assert r.stdout == data

    def test_arguments_after_double_dash_are_the_commands(self) -> None:
        """Options after '--' belong to the command, not to procflow."""
        r = cli("run", "--", "echo", "--timeout", "5", "--summary")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"--timeout 5 --summary\n", b"")

    def test_command_without_double_dash(self) -> None:
        """The '--' may be left out when the command does not start with '-'."""
        r = cli("run", "echo", "hi")
        assert (r.returncode, r.stdout) == (0, b"hi\n")


class TestExitStatus:
    """procflow's own status is the pipeline's, as a shell with pipefail reports it."""

    def test_status_of_a_failing_command(self, launcher: list[str]) -> None:
        """A command's non-zero status is procflow's status."""
        r = cli("run", "--", "sh", "-c", "exit 3", launcher=launcher)
        assert r.returncode == 3
        assert r.stdout == b""

    @pytest.mark.parametrize(
        ("stages", "status"),
        [
            ([["sh", "-c", "exit 3"], ["cat"]], 3),
            ([["true"], ["sh", "-c", "exit 4"]], 4),
            ([["sh", "-c", "exit 3"], ["sh", "-c", "cat >/dev/null; exit 5"]], 5),
            ([["yes"], ["head", "-1"]], 0),
        ],
        ids=["first-fails", "last-fails", "rightmost-wins", "sigpipe-upstream-is-ok"],
    )
    def test_pipeline_status(self, stages: list[list[str]], status: int) -> None:
        """Pipefail: the rightmost failing stage decides; SIGPIPE upstream is not a failure."""
        argv: list[str] = []
        for s in stages:
            argv += [*(["|"] if argv else []), *s]
        r = cli("run", "--", *argv)
        assert r.returncode == status

    @pytest.mark.usefixtures("sigint_default")
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
    def test_killed_by_a_signal(self, sig: signal.Signals) -> None:
        """A command killed by signal N gives 128+N, as a shell does."""
        r = cli("run", "--", "sh", "-c", f"kill -{sig.name[3:]} $$")
        assert r.returncode == 128 + sig

    def test_last_stage_killed_by_a_signal(self) -> None:
        """The last stage of a pipeline killed by a signal gives 128+N."""
        r = cli("run", "--", "echo", "x", "|", "sh", "-c", "kill -KILL $$")
        assert r.returncode == 128 + signal.SIGKILL


class TestTimeout:
    """--timeout stops the whole tree and exits 124, as GNU timeout does."""

    def test_timeout_stops_the_tree(self, launcher: list[str]) -> None:
        """The command and its background grandchild are gone; status 124."""
        script = "sleep 60 & echo $!; echo $$; sleep 60; wait"
        t0 = time.monotonic()
        r = cli("run", "--timeout", "0.5", "--", "sh", "-c", script, launcher=launcher)
        took = time.monotonic() - t0
        assert r.returncode == 124
        pids = [int(x) for x in r.stdout.split()]
        assert len(pids) == 2
        assert all(gone(pid) for pid in pids)
        assert took < 10
        assert b"timed out" in r.stderr

    def test_timeout_stops_every_stage(self) -> None:
        """Every stage of a timed-out pipeline is stopped."""
        nap = unique_seconds()
        r = cli("run", "--timeout", "0.5", "--", "sleep", nap, "|", "sleep", nap)
        assert r.returncode == 124
        assert running_with(nap) == []

    def test_kill_grace_for_a_child_that_ignores_sigterm(self) -> None:
        """A child ignoring SIGTERM is killed --kill-grace seconds later."""
        t0 = time.monotonic()
        nap = unique_seconds()
        r = cli("run", "--timeout", "0.3", "--kill-grace", "0.2", "--", "sh", "-c", f"trap '' TERM; sleep {nap}")
        assert r.returncode == 124
        assert time.monotonic() - t0 < 10
        assert running_with(nap) == []


@pytest.mark.usefixtures("sigint_default")
class TestSignalsToProcflow:
    """A signal to procflow itself stops the tree, then procflow exits as killed by it."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    def test_signal_stops_the_tree(self, launcher: list[str], sig: signal.Signals) -> None:
        """SIGTERM gives 143 and SIGINT 130, and the child is gone."""
        with subprocess.Popen(
            [*launcher, "run", "--", "sh", "-c", "echo $$; exec sleep 60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            try:
                assert proc.stdout is not None
                child = int(proc.stdout.readline())  # the child is running: synchronize on its output
                proc.send_signal(sig)
                _, err = proc.communicate(timeout=TIMEOUT)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(TIMEOUT)
        assert proc.returncode == 128 + sig
        assert gone(child)
        assert b"Traceback" not in err


class TestCannotStart:
    """A program that cannot be started: 127 or 126 and a clear one-line message."""

    def test_missing_program(self, launcher: list[str]) -> None:
        """127, and the message names the program and says it was not found."""
        r = cli("run", "--", "no-such-program-xyz", "arg", launcher=launcher)
        assert r.returncode == 127
        assert r.stdout == b""
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1
        assert "no-such-program-xyz" in lines[0]
        assert "not found" in lines[0]

    def test_missing_program_in_a_pipeline(self) -> None:
        """127 for a missing last stage; the stage already started is stopped."""
        nap = unique_seconds()
        r = cli("run", "--", "sleep", nap, "|", "no-such-program-xyz")
        assert r.returncode == 127
        assert b"no-such-program-xyz" in r.stderr
        assert running_with(nap) == []

    @pytest.mark.parametrize("kind", ["not-executable", "directory", "no-shebang"])
    def test_cannot_execute(self, tmp_path: Path, kind: str) -> None:
        """126 for a file that exists but cannot be executed."""
        target = tmp_path / "prog"
        if kind == "directory":
            target.mkdir()
        else:
            target.write_bytes(b"\x00\x01\x02 not a program\n")
            if kind == "no-shebang":
                target.chmod(target.stat().st_mode | stat.S_IXUSR)
        r = cli("run", "--", str(target))
        assert r.returncode == 126
        assert r.stdout == b""
        assert len(r.stderr.splitlines()) == 1
        assert str(target).encode() in r.stderr

    def test_missing_working_directory(self, tmp_path: Path) -> None:
        """A --cwd that does not exist is named; nothing runs."""
        missing = tmp_path / "nowhere"
        r = cli("run", "--cwd", str(missing), "--", "echo", "ran")
        assert r.returncode != 0
        assert r.stdout == b""
        assert str(missing).encode() in r.stderr
        assert len(r.stderr.splitlines()) == 1


class TestUsage:
    """Bad usage: status 2 and a one-line error, nothing on stdout."""

    @pytest.mark.parametrize(
        "args",
        [
            [],
            ["run"],
            ["run", "--"],
            ["run", "--", "echo", "a", "|"],
            ["run", "--", "|", "echo", "a"],
            ["run", "--", "echo", "a", "|", "|", "cat"],
            ["run", "--bogus", "--", "echo"],
            ["frobnicate"],
            ["run", "--timeout", "abc", "--", "echo"],
            ["run", "--timeout", "0", "--", "echo"],
            ["run", "--timeout", "-1", "--", "echo"],
            ["run", "--timeout", "nan", "--", "echo"],
            ["run", "--kill-grace", "soon", "--", "echo"],
            ["run", "--env", "NOEQUALS", "--", "echo"],
            ["run", "--env", "=value", "--", "echo"],
            ["run", "--log", "xml", "--", "echo"],
        ],
        ids=lambda a: " ".join(a) or "nothing",
    )
    def test_bad_usage(self, args: list[str]) -> None:
        """Exit 2 with 'procflow: error: ...' on one line."""
        r = cli(*args)
        assert r.returncode == 2
        assert r.stdout == b""
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("procflow: error: ")

    def test_bad_usage_runs_nothing(self, tmp_path: Path) -> None:
        """A usage error is found before any stage is started."""
        r = cli("run", "--", "touch", "made", "|", "", cwd=tmp_path)
        assert r.returncode == 2
        assert not (tmp_path / "made").exists()

    def test_help(self, launcher: list[str]) -> None:
        """--help prints the usage on stdout and exits 0."""
        r = cli("run", "--help", launcher=launcher)
        assert r.returncode == 0
        assert b"usage: procflow run" in r.stdout
        assert b"--timeout" in r.stdout


class TestOptions:
    """--cwd and --env apply to every stage."""

    def test_cwd(self, tmp_path: Path) -> None:
        """Every stage runs in --cwd."""
        r = cli("run", "--cwd", str(tmp_path), "--", "pwd", "|", "sh", "-c", "cat; pwd")
        assert r.returncode == 0
        assert r.stdout.decode().splitlines() == [os.path.realpath(tmp_path)] * 2

    def test_env_is_repeatable_and_added_to_ours(self) -> None:
        """Each --env K=V is set in every stage, on top of procflow's own environment."""
        env = dict(os.environ, PROCFLOW_TEST_INHERITED="kept")
        r = cli(
            "run", "--env", "A=1", "--env", "B=two=2", "--",
            "sh", "-c", 'echo "$A $B $PROCFLOW_TEST_INHERITED"', "|", "sh", "-c", 'cat; echo "$A"',
            env=env,
        )
        assert r.returncode == 0
        assert r.stdout == b"1 two=2 kept\n1\n"

    def test_env_overrides(self) -> None:
        """--env replaces a variable procflow inherited."""
        env = dict(os.environ, PROCFLOW_TEST_VAR="old")
        r = cli("run", "--env", "PROCFLOW_TEST_VAR=new", "--", "sh", "-c", "echo $PROCFLOW_TEST_VAR", env=env)
        assert r.stdout == b"new\n"


def _json_lines(stderr: bytes) -> list[dict[str, object]]:
    lines = stderr.decode().splitlines()
    assert lines
    return [json.loads(line) for line in lines]


class TestLogging:
    """Logs go to stderr: warnings only by default, every event with --log."""

    def test_json_log(self, launcher: list[str]) -> None:
        """With --log json each stderr line is JSON; spawns and exits are there with pid and argv."""
        r = cli("run", "--log", "json", "--", "printf", "x\\n", "|", "cat", launcher=launcher)
        assert r.returncode == 0
        assert r.stdout == b"x\n"
        events = _json_lines(r.stderr)
        spawns = [e for e in events if e["event"] == "proc.spawn"]
        exits = [e for e in events if e["event"] == "proc.exit"]
        assert [e["argv"] for e in spawns] == [["printf", "x\\n"], ["cat"]]
        assert {e["pid"] for e in exits} == {e["pid"] for e in spawns}
        for e in exits:
            assert e["returncode"] == 0
            assert {"duration", "cpu_time", "max_rss", "level", "timestamp"} <= set(e)

    def test_json_log_of_a_timeout(self) -> None:
        """A timeout's events (proc.timeout, proc.kill) are JSON lines too."""
        r = cli("run", "--log", "json", "--timeout", "0.3", "--", "sleep", "60")
        assert r.returncode == 124
        lines = r.stderr.decode().splitlines()
        events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
        assert {"proc.spawn", "proc.timeout", "proc.kill", "proc.exit"} <= set(events)

    def test_console_log(self) -> None:
        """With --log console the events are readable lines on stderr, stdout untouched."""
        r = cli("run", "--log", "console", "--", "echo", "hi")
        assert r.returncode == 0
        assert r.stdout == b"hi\n"
        text = r.stderr.decode()
        assert "proc.spawn" in text
        assert "proc.exit" in text
        assert not text.lstrip().startswith("{")

    def test_no_log_option_shows_warnings_only(self) -> None:
        """Without --log a timeout shows its warning, but no debug event."""
        r = cli("run", "--timeout", "0.3", "--", "sleep", "60")
        assert r.returncode == 124
        assert b"proc.timeout" in r.stderr
        assert b"proc.spawn" not in r.stderr
        assert b"proc.exit" not in r.stderr
        assert r.stdout == b""


class TestSummary:
    """--summary: a table per stage on stderr at the end."""

    @staticmethod
    def table(stderr: bytes) -> tuple[list[str], list[list[str]]]:
        lines = stderr.decode().splitlines()
        at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "argv"])
        header = lines[at].split()
        return header, [line.split() for line in lines[at + 1 :]]

    def test_summary_per_stage(self, launcher: list[str]) -> None:
        """One row per stage with its pid and status; the columns are all there."""
        r = cli("run", "--summary", "--", "sh", "-c", "echo $$", "|", "cat", launcher=launcher)
        assert r.returncode == 0
        header, rows = self.table(r.stderr)
        assert header == ["stage", "argv", "pid", "status", "seconds", "cpu", "max_rss_MiB"]
        assert len(rows) == 2
        assert r.stdout.strip().decode() in rows[0]
        assert rows[1][:2] == ["2", "cat"]
        for row in rows:
            assert row[-4] == "ok"
            float(row[-3]), float(row[-2]), float(row[-1])  # seconds, cpu, MiB are numbers

    def test_summary_shows_failures_and_sigpipe(self) -> None:
        """A stage killed by SIGPIPE upstream and a failing last stage are shown as such."""
        r = cli("run", "--summary", "--", "yes", "|", "sh", "-c", "head -1 >/dev/null; exit 3")
        assert r.returncode == 3
        text = r.stderr.decode()
        assert "killed by SIGPIPE" in text
        assert "exited with status 3" in text

    def test_summary_after_a_timeout(self) -> None:
        """The table is printed after a timeout too, with the signal that stopped the stage."""
        r = cli("run", "--summary", "--timeout", "0.3", "--", "sleep", "60")
        assert r.returncode == 124
        assert "killed by SIGTERM" in r.stderr.decode()

    def test_no_summary_without_the_option(self) -> None:
        """Without --summary there is no table."""
        r = cli("run", "--", "true")
        assert r.stderr == b""


class TestInterruptedSpawn:
    """A signal to procflow can land while a stage is being spawned; nothing may survive it."""

    FORK_THEN_INTERRUPT = "\n".join(
        [
            "import subprocess, sys",
            "from procflow import _cli",
            "real = subprocess._fork_exec",
            "def fork_exec(*args):",
            "    pid = real(*args)",
            "    print(pid, flush=True)",
            "    raise KeyboardInterrupt  # what a signal handler does as the call returns",
            "subprocess._fork_exec = fork_exec",
            "sys.exit(_cli.main(sys.argv[1:]))",
        ]
    )

    def test_cli_stops_a_stage_whose_spawn_was_interrupted(self) -> None:
        """procflow run exits 130 and the stage it was starting is gone."""
        nap = unique_seconds()
        r = subprocess.run(
            [sys.executable, "-c", self.FORK_THEN_INTERRUPT, "run", "--", "sleep", nap],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert r.returncode == 130, r.stderr
        assert gone(int(r.stdout))
        assert running_with(nap) == []

    def test_interrupt_before_the_exit_watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An interrupt right after the spawn stops the child at once (no wait for it to end)."""
        import procflow._wiring
        from procflow import Proc

        def interrupted(pid: int) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(procflow._wiring, "ExitWatch", interrupted)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            Proc("sleep", "5").run()
        assert time.monotonic() - t0 < 3

    @pytest.mark.usefixtures("sigint_default")
    def test_interrupt_as_the_spawn_returns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An interrupt as the spawn call returns still stops the child (library level)."""
        from procflow import Proc

        real = subprocess._fork_exec  # type: ignore[attr-defined]

        def fork_exec_then_interrupt(*args: object) -> int:
            pid = real(*args)
            # A Ctrl-C arriving during the spawn: Python runs the handler as this call returns.
            signal.raise_signal(signal.SIGINT)
            return pid  # type: ignore[no-any-return]

        monkeypatch.setattr(subprocess, "_fork_exec", fork_exec_then_interrupt)
        nap = unique_seconds()
        with pytest.raises(KeyboardInterrupt):
            Proc("sleep", nap).run()
        monkeypatch.undo()
        left = running_with(nap)
        for pid in left:  # clean up what the bug leaves: kill and reap our own child
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert left == []
