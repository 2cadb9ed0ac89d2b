"""Lifecycle events through structlog: names, fields, levels, where they go, and Secret redaction."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import CHILD, child
from structlog.testing import capture_logs

from procflow import (
    ExitError,
    Proc,
    ProcTimeout,
    Secret,
    SpawnError,
    Supervisor,
    os_pipe,
    pipe,
)

ROOT = str(Path(__file__).resolve().parent.parent)
EVENTS = {
    "proc.spawn",
    "proc.exit",
    "proc.timeout",
    "proc.kill",
    "pipe.writer_blocked",
    "pipe.writer_unblocked",
    "pipe.broken",
    "pipe.held_open",
    "supervisor.leak",
}


def wait_for(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Bounded wait until ``cond()`` is truthy; returns its value."""
    end = time.monotonic() + timeout
    tick = threading.Event()
    while not (value := cond()):
        assert time.monotonic() < end, "timed out"
        tick.wait(0.01)
    return value


def only(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in logs if e["event"] == name]
    assert len(found) == 1, (name, logs)
    return found[0]


def run_fresh(code: str, tmp_path: Path, name: str = "prog.py") -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that configured neither structlog nor logging."""
    script = tmp_path / name
    script.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\n" + textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


class TestEventFields:
    def test_spawn_and_exit(self) -> None:
        """proc.spawn (pid, argv) and proc.exit (returncode, duration, cpu_time, max_rss) are debug events."""
        with capture_logs() as logs:
            result = child("exit", 3).unchecked().run()
        spawn = only(logs, "proc.spawn")
        assert spawn == {"event": "proc.spawn", "log_level": "debug", "pid": result.pid, "argv": list(result.argv)}
        ex = only(logs, "proc.exit")
        assert ex["log_level"] == "debug"
        assert ex["pid"] == result.pid and ex["argv"] == list(result.argv)
        assert ex["returncode"] == 3
        assert isinstance(ex["duration"], float) and 0 <= ex["duration"] < 10
        assert isinstance(ex["cpu_time"], float) and ex["cpu_time"] > 0
        assert isinstance(ex["max_rss"], int) and ex["max_rss"] > 1 << 20
        assert ex["max_rss"] == result.max_rss
        assert [e["event"] for e in logs] == ["proc.spawn", "proc.exit"]

    def test_pipeline_logs_every_stage(self) -> None:
        """A pipeline logs a spawn and an exit for each stage, with that stage's pid."""
        with capture_logs() as logs:
            result = (child("echo", "x") | child("cat")).stdout_capture().run()
        pids = [s.pid for s in result.stages]
        assert [e["pid"] for e in logs if e["event"] == "proc.spawn"] == pids
        assert sorted(e["pid"] for e in logs if e["event"] == "proc.exit") == sorted(pids)

    def test_timeout_and_kill(self) -> None:
        """proc.timeout then proc.kill (SIGTERM, then SIGKILL past the grace) are warnings with pid and argv."""
        cmd = child("ignore_sigterm").stdout_capture().timeout(0.3).kill_grace(0.2)
        with capture_logs() as logs, pytest.raises(ProcTimeout) as info:
            cmd.run()
        pid, argv = info.value.result.pid, list(info.value.result.argv)
        to = only(logs, "proc.timeout")
        assert to["log_level"] == "warning" and to["pid"] == pid and to["argv"] == argv
        assert to["timeout"] == 0.3
        kills = [e for e in logs if e["event"] == "proc.kill"]
        assert [(k["signal"], k["log_level"], k["pid"], k["argv"]) for k in kills] == [
            ("SIGTERM", "warning", pid, argv),
            ("SIGKILL", "warning", pid, argv),
        ]
        assert only(logs, "proc.exit")["returncode"] == -9
        order = [e["event"] for e in logs]
        assert order == ["proc.spawn", "proc.timeout", "proc.kill", "proc.kill", "proc.exit"]

    def test_writer_blocked_and_unblocked(self) -> None:
        """pipe.writer_blocked carries blocked_for and bytes_written; pipe.writer_unblocked follows."""
        with Supervisor(blocked_after=0.1):
            r, w = pipe(capacity=100)
        t = threading.Thread(target=lambda: (w.write(b"b" * 300), w.close()), name="test-writer")
        with capture_logs() as logs:
            t.start()
            blocked = wait_for(lambda: [e for e in logs if e["event"] == "pipe.writer_blocked"])[0]
            data = r.read()
            t.join(10)
            unblocked = wait_for(lambda: [e for e in logs if e["event"] == "pipe.writer_unblocked"])[0]
        r.close()
        assert data == b"b" * 300
        assert blocked["log_level"] == unblocked["log_level"] == "warning"
        assert blocked["blocked_for"] >= 0.1 and blocked["bytes_written"] == 100
        assert "bytes_written" in unblocked

    def test_broken_stdin(self) -> None:
        """A child that exits without reading all its input logs pipe.broken (a warning), not an error."""
        with capture_logs() as logs:
            result = child("read_line_then_exit").input(b"one\n" + b"x" * (4 << 20)).stdout_capture().run()
        assert result.ok and result.stdout == b"one\n"
        broken = only(logs, "pipe.broken")
        assert broken["log_level"] == "warning"
        assert broken["pid"] == result.pid and broken["argv"] == list(result.argv)
        assert broken["stream"] == "stdin"
        assert 0 < broken["bytes_written"] < 4 << 20

    def test_held_open(self) -> None:
        """pipe.held_open is a warning with the child's pid, argv and the holders' pids."""
        with capture_logs() as logs:
            result = child("grandchild", "exit").stdout_capture().wait_delay(0.2).run()
        grandchild = int(result.stdout.split()[1])
        try:
            held = only(logs, "pipe.held_open")
            assert held["log_level"] == "warning"
            assert held["pid"] == result.pid and held["argv"] == list(result.argv)
            assert held["holders"] == [grandchild]
        finally:
            psutil.Process(grandchild).kill()

    def test_leak_kinds(self) -> None:
        """supervisor.leak is a warning with kind child (pid, argv), fd or thread."""
        release = threading.Event()

        def stuck() -> Any:
            release.wait(30)
            yield b""

        with capture_logs() as logs:
            try:
                with Supervisor(kill_grace=0.2):
                    running = child("sleep_forever").start()
                    feeding = child("cat").input(stuck()).start()
                    r, w = os_pipe()
                    fds = sorted([r.fileno(), w.fileno()])
            finally:
                release.set()
        leaks = [e for e in logs if e["event"] == "supervisor.leak"]
        assert {e["log_level"] for e in leaks} == {"warning"}
        assert sorted(e["kind"] for e in leaks) == ["child", "child", "fd", "fd", "thread"]
        child_leaks = {e["pid"]: e["argv"][-1] for e in leaks if e["kind"] == "child"}
        assert child_leaks == {running.pid: "sleep_forever", feeding.pid: "cat"}
        assert sorted(e["fd"] for e in leaks if e["kind"] == "fd") == fds
        thread_leak = next(e for e in leaks if e["kind"] == "thread")
        assert thread_leak["thread"].startswith("procflow-feed[pid=")

    def test_only_known_event_names(self) -> None:
        """Every event procflow emits in a busy scenario is one of the names the contract lists."""
        with capture_logs() as logs:
            child("read_line_then_exit").input(b"a\n" + b"b" * (1 << 20)).stdout_capture().run()
            with pytest.raises(ProcTimeout):
                child("sleep_forever").stdout_capture().timeout(0.2).run()
            with pytest.raises(ExitError):
                (child("exit", 1) | child("cat")).run()
        assert logs
        assert {e["event"] for e in logs} <= EVENTS
        for e in logs:
            assert e["log_level"] == ("debug" if e["event"] in ("proc.spawn", "proc.exit") else "warning")


class TestWhereEventsGo:
    def test_unconfigured_program_stdout_stays_clean(self, tmp_path: Path) -> None:
        """A program that configured nothing: nothing on stdout, the timeout warning on stderr, no debug."""
        proc = run_fresh(
            f"""
            from procflow import Proc, ProcTimeout
            try:
                Proc({sys.executable!r}, "-c", "import time; print('ready', flush=True); time.sleep(60)"
                     ).stdout_capture().timeout(0.3).run()
            except ProcTimeout:
                pass
            """,
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""
        assert "proc.timeout" in proc.stderr
        assert "proc.kill" in proc.stderr
        assert "proc.spawn" not in proc.stderr and "proc.exit" not in proc.stderr

    def test_unconfigured_program_success_is_silent(self, tmp_path: Path) -> None:
        """A successful run in a program that configured nothing prints nothing at all."""
        proc = run_fresh(
            """
            from procflow import Proc
            assert Proc("echo", "hi").stdout_capture().run().stdout == b"hi\\n"
            """,
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and proc.stderr == ""

    def test_stdlib_logging_at_debug_sees_everything(self, tmp_path: Path) -> None:
        """An application that set up standard logging at DEBUG (no structlog) gets every event there."""
        proc = run_fresh(
            """
            import logging, sys
            logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
            from procflow import Proc
            Proc("true").run()
            """,
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""
        assert "procflow DEBUG proc.spawn" in proc.stderr
        assert "procflow DEBUG proc.exit" in proc.stderr

    def test_structlog_configured_gets_events_through_its_processors(self, tmp_path: Path) -> None:
        """An application that configured structlog receives procflow's events through its processors."""
        proc = run_fresh(
            """
            import json, sys, structlog
            seen = []
            def keep(logger, method, event_dict):
                seen.append(dict(event_dict))
                raise structlog.DropEvent
            structlog.configure(processors=[structlog.processors.add_log_level, keep])
            from procflow import Proc
            Proc("true").run()
            print(json.dumps([[e["event"], e["level"]] for e in seen]))
            """,
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == '[["proc.spawn", "debug"], ["proc.exit", "debug"]]'
        assert proc.stderr == ""

    def test_app_logging_json_to_stdout_gets_events_there(self, tmp_path: Path) -> None:
        """An application that chose structlog JSON on stdout gets procflow's events in that stream."""
        proc = run_fresh(
            """
            import structlog
            structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()])
            from procflow import Proc
            Proc("true").run()
            """,
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert '"event": "proc.spawn"' in proc.stdout and '"level": "debug"' in proc.stdout

    def test_capture_logs_leaves_stdout_clean(self, capfd: pytest.CaptureFixture[str]) -> None:
        """After capture_logs() (structlog back on its built-in defaults) procflow still never prints on stdout."""
        with capture_logs():
            pass
        Proc("true").run()
        with pytest.raises(ProcTimeout):
            Proc("sleep", "30").timeout(0.1).run()
        out, err = capfd.readouterr()
        assert out == ""
        assert "proc.spawn" not in err

    def test_logger_name(self) -> None:
        """Events go to the standard-library logger named 'procflow' when structlog is not configured."""
        from procflow import _log

        assert _log.stdlib_logger is logging.getLogger("procflow")


class TestSecret:
    SECRET = "s3cr3t-t0ken-value"

    def _assert_hidden(self, *texts: object) -> None:
        for t in texts:
            assert self.SECRET not in str(t), t
            assert self.SECRET not in repr(t), t

    def test_secret_argv_never_shown(self) -> None:
        """A Secret argv item reaches the child but no event, error message or repr."""
        cmd = Proc(sys.executable, CHILD, "echo", Secret(self.SECRET)).stdout_capture()
        with capture_logs() as logs:
            result = cmd.run()
        assert result.stdout.decode().strip() == self.SECRET  # the child got the real value
        self._assert_hidden(logs, cmd, result.argv, repr(result).replace(repr(result.stdout), ""))
        assert "***" in repr(cmd) and "***" in result.argv

    def test_secret_in_exit_error_and_timeout(self) -> None:
        """ExitError and ProcTimeout messages show *** for a Secret."""
        with capture_logs() as logs:
            with pytest.raises(ExitError) as failed:
                Proc("sh", "-c", "exit 4", Secret(self.SECRET)).run()
            with pytest.raises(ProcTimeout) as timed_out:
                Proc("sh", "-c", "sleep 30", "sh", Secret(self.SECRET)).timeout(0.2).run()
        self._assert_hidden(logs, failed.value, timed_out.value, failed.value.result, timed_out.value.result)
        assert "***" in str(failed.value) and "***" in str(timed_out.value)

    def test_secret_program_in_spawn_error(self) -> None:
        """A Secret program name that cannot be started is not shown in the SpawnError."""
        with capture_logs() as logs, pytest.raises(SpawnError) as info:
            Proc(Secret(f"/nonexistent/{self.SECRET}")).run()
        self._assert_hidden(logs, info.value, info.value.argv)
        cause = info.value.__cause__
        assert cause is None or self.SECRET not in str(cause)

    def test_secret_in_running_and_supervisor(self) -> None:
        """Running's repr, ChildInfo and leak events redact a Secret."""
        with capture_logs() as logs, Supervisor() as sup:
            running = Proc(sys.executable, CHILD, "sleep_forever", Secret(self.SECRET)).start()
            infos = sup.children()
            self._assert_hidden(running, infos)
            del running
            gc.collect()
        self._assert_hidden(logs)
        assert any(e["event"] == "supervisor.leak" for e in logs)

    def test_env_values_never_logged(self) -> None:
        """Environment values, secret or not, appear in no event; a Secret env value in no repr."""
        plain = "plain-env-value-4242"
        cmd = child("env", "PLAIN", "HIDDEN").env(PLAIN=plain, HIDDEN=Secret(self.SECRET)).stdout_capture()
        with capture_logs() as logs:
            result = cmd.run()
            with pytest.raises(ProcTimeout) as info:
                child("sleep_forever").env(PLAIN=plain, HIDDEN=Secret(self.SECRET)).timeout(0.2).run()
        assert result.stdout.decode().splitlines() == [f"PLAIN={plain}", f"HIDDEN={self.SECRET}"]
        for e in logs:
            assert plain not in repr(e) and self.SECRET not in repr(e), e
        self._assert_hidden(cmd, info.value)
        assert plain not in str(info.value)

    def test_secret_repr(self) -> None:
        """Secret's own repr and str hide the value; it cannot be pickled."""
        import pickle

        s = Secret(self.SECRET)
        self._assert_hidden(s, [s], {"k": s})
        assert s.reveal() == self.SECRET
        with pytest.raises(TypeError):
            pickle.dumps(s)
