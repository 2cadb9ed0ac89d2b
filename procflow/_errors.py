"""The public exception tree (see API.md §3).

Every error that procflow raises on purpose is a :class:`ProcError`. Each one
that concerns a finished (or stopped) run carries the :class:`~procflow.Result`
collected so far, so nothing the child wrote is lost with the exception.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._result import Result

__all__ = [
    "ProcError",
    "SpawnError",
    "ExitError",
    "ProcTimeout",
    "Cancelled",
    "OutputLimitExceeded",
]

#: How much of a failing stage's stderr an error message shows.
STDERR_TAIL_LINES = 10
STDERR_TAIL_CHARS = 2000


def quote_argv(argv: Sequence[str]) -> str:
    """The command as a shell would need it typed (already redacted)."""
    return " ".join(shlex.quote(a) for a in argv)


def describe_status(returncode: int) -> str:
    """``exited with status 1`` or ``killed by SIGTERM``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def stderr_tail(stderr: bytes | str | None) -> str:
    """The last lines of captured stderr, decoded leniently, or ``""``."""
    if not stderr:
        return ""
    text = stderr if isinstance(stderr, str) else stderr[-8 * STDERR_TAIL_CHARS :].decode(
        "utf-8", "replace"
    )
    lines = text.rstrip("\n").splitlines()[-STDERR_TAIL_LINES:]
    tail = "\n".join(lines)
    if len(tail) > STDERR_TAIL_CHARS:
        tail = "..." + tail[-STDERR_TAIL_CHARS:]
    return tail


class ProcError(Exception):
    """Base class of every error procflow raises about a process."""


class SpawnError(ProcError, OSError):
    """The child could not be started.

    ``argv`` is the (redacted) command, ``errno`` the OS error number; the
    original :class:`OSError` is the ``__cause__``.
    """

    def __init__(self, message: str, argv: Sequence[str], errno: int | None) -> None:
        # OSError's own __init__ would reinterpret the arguments; keep ours.
        Exception.__init__(self, message)
        self.argv: tuple[str, ...] = tuple(argv)
        self.errno = errno
        self.strerror = message
        self.message = message

    def __str__(self) -> str:
        return self.message


class _ResultError(ProcError):
    """An error that carries the result collected up to the failure."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.result))


class ExitError(_ResultError):
    """A (checked) command exited with a non-zero status or was killed.

    ``str()`` has the shell-quoted command, the status or signal name, the
    failing stage of a pipeline and the last lines of its captured stderr.
    """

    @classmethod
    def from_result(cls, result: Result, stage_index: int | None = None) -> ExitError:
        stages = result.stages
        if stage_index is None:
            stage_index = len(stages) - 1
        failing = stages[stage_index]
        where = ""
        if len(stages) > 1:
            where = f" (stage {stage_index + 1} of {len(stages)})"
        message = f"command {quote_argv(failing.argv)!s}{where} {describe_status(failing.returncode)}"
        tail = stderr_tail(failing.stderr)
        if tail:
            message += "\nstderr (last lines):\n" + tail
        err = cls(message, result)
        err.stage = stage_index
        return err

    stage: int = 0


class ProcTimeout(_ResultError, TimeoutError):
    """The run passed its ``.timeout()``: the process tree was stopped."""


class Cancelled(_ResultError):
    """The run was cancelled through a :class:`~procflow.Cancel` token."""


class OutputLimitExceeded(_ResultError):
    """A capture passed its ``max_bytes``; ``stream`` names it."""

    stream: str = "stdout"
