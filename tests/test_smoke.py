"""A first pass over the core: each behaviour once, end to end."""

from __future__ import annotations

import pytest
from conftest import child

from procflow import ExitError, Proc, ProcTimeout, SpawnError


def test_capture_both_streams() -> None:
    """stdout and stderr are captured separately and byte-exact."""
    r = child("mix", "oe", 0, 1000, 2000).stdout_capture().stderr_capture().run()
    assert r.stdout == b"o" * 1000
    assert r.stderr.startswith(b"e" * 2000)


def test_exit_error_names_command_status_and_stderr() -> None:
    """ExitError has the command, the status and the stderr tail."""
    with pytest.raises(ExitError) as info:
        child("stderr_lines", 3, 4).stderr_capture().run()
    msg = str(info.value)
    assert "exited with status 4" in msg
    assert "err line 2" in msg
    assert info.value.result.returncode == 4


def test_timeout_kills() -> None:
    """A timeout stops the child and raises ProcTimeout."""
    with pytest.raises(ProcTimeout) as info:
        child("sleep_forever").stdout_capture().timeout(0.5).run()
    assert info.value.result.returncode < 0
    assert info.value.result.stdout == b"ready\n"


def test_spawn_error() -> None:
    """A missing program is named."""
    with pytest.raises(SpawnError, match="no-such-program"):
        Proc("no-such-program-xyz").run()
