"""Result: what a finished run left behind."""

from __future__ import annotations

import signal
from typing import Any

from ._errors import ExitError, describe_status

__all__ = ["Result"]

_SIGPIPE = int(signal.SIGPIPE)


def stage_failed(index: int, count: int, returncode: int) -> bool:
    """Pipefail, made practical: an upstream stage that died of SIGPIPE did not fail.

    Its reader went away (``yes | head -1``). A shell stage reports the same
    thing as 128+SIGPIPE.
    """
    if returncode == 0:
        return False
    return not (index < count - 1 and returncode in (-_SIGPIPE, 128 + _SIGPIPE))


class Result:
    """The outcome of a run: status, captured output, timing and resources.

    ``stages`` holds one :class:`Result` per pipeline stage (``(self,)`` for a
    single command). For a pipeline, ``returncode`` is that of the rightmost
    failing stage (else 0), ``stdout`` is the last stage's and ``stderr`` the
    captured stderr of every stage, in stage order.
    """

    __slots__ = (
        "_checked",
        "_failed_stage",
        "argv",
        "cpu_time",
        "duration",
        "max_rss",
        "pid",
        "returncode",
        "stages",
        "stderr",
        "stdout",
    )

    def __init__(
        self,
        argv: tuple[str, ...],
        returncode: int,
        stdout: Any,
        stderr: Any,
        pid: int,
        duration: float,
        cpu_time: float,
        max_rss: int,
        stages: tuple[Result, ...] | None = None,
        failed_stage: int | None = None,
        checked: bool = True,
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.pid = pid
        self.duration = duration
        self.cpu_time = cpu_time
        self.max_rss = max_rss
        self.stages: tuple[Result, ...] = stages if stages is not None else (self,)
        if failed_stage is None and returncode != 0:
            failed_stage = len(self.stages) - 1
        self._failed_stage = failed_stage
        self._checked = checked

    @property
    def ok(self) -> bool:
        """True when no stage failed (SIGPIPE upstream of the end is not a failure)."""
        return self._failed_stage is None

    @property
    def failed_stage(self) -> int | None:
        """Index of the stage that decides the status, or None when ok."""
        return self._failed_stage

    def check(self) -> Result:
        """Raise :class:`~procflow.ExitError` unless ok; return self."""
        if not self.ok:
            raise ExitError.from_result(self, self._failed_stage)
        return self

    def _raise_if_checked(self) -> Result:
        if not self.ok and self._checked:
            raise ExitError.from_result(self, self._failed_stage)
        return self

    @property
    def status(self) -> str:
        return "ok" if self.returncode == 0 else describe_status(self.returncode)

    def __repr__(self) -> str:
        def short(v: Any) -> str:
            if v is None:
                return "None"
            r = repr(v[:60] if len(v) > 60 else v)
            return r + ("..." if len(v) > 60 else "")

        return (
            f"Result(argv={list(self.argv)!r}, returncode={self.returncode}, "
            f"stdout={short(self.stdout)}, stderr={short(self.stderr)}, pid={self.pid}, "
            f"duration={self.duration:.3f})"
        )
