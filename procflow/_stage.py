"""One child of a run: its spec, its pid, and its status once reaped."""

from __future__ import annotations

import os
import sys
import time

from ._errors import SpawnError
from ._log import emit
from ._pumps import Capture
from ._spawn import ExitWatch
from ._spec import StageSpec

__all__ = ["StageRun", "open_path", "is_tty"]

#: ru_maxrss is in KiB on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


class StageRun:
    """One child: its spec, pid, exit watch and, once reaped, its status."""

    def __init__(self, index: int, spec: StageSpec) -> None:
        self.index = index
        self.spec = spec
        self.argv = spec.display_argv
        self.pid = 0
        self.watch: ExitWatch | None = None
        self.started = 0.0
        self.ended: float | None = None
        self.returncode: int | None = None
        self.cpu_time = 0.0
        self.max_rss = 0
        self.out_capture: Capture | None = None
        self.err_capture: Capture | None = None

    @property
    def reaped(self) -> bool:
        return self.returncode is not None

    @property
    def exited(self) -> bool:
        """Exited, reaped or not. procflow reaps only when the run is finished: until
        then the zombie keeps the pid and the process group id from being reused,
        so the group of a run whose leader exited can still be signalled safely."""
        return self.ended is not None

    def check_exited(self) -> bool:
        if self.ended is None and self.watch is not None and self.watch.exited():
            self.ended = time.monotonic()
        return self.ended is not None

    def reap(self, block: bool) -> bool:
        """Collect the exit status with wait4; True once reaped."""
        if self.returncode is not None:
            return True
        while True:
            try:
                pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
            except InterruptedError:
                continue
            except ChildProcessError:
                # Someone else reaped it (a SIGCHLD handler set to SIG_IGN, os.wait()):
                # the status is lost.
                pid, status, ru = self.pid, 255 << 8, None
            break
        if pid == 0:
            return False
        if self.ended is None:
            self.ended = time.monotonic()
        self.returncode = os.waitstatus_to_exitcode(status)
        if ru is not None:
            self.cpu_time = ru.ru_utime + ru.ru_stime
            # ru_maxrss is KiB on Linux, bytes on macOS.
            self.max_rss = ru.ru_maxrss * _MAXRSS_UNIT
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        emit(
            "proc.exit",
            pid=self.pid,
            argv=list(self.argv),
            returncode=self.returncode,
            duration=round(self.ended - self.started, 6),
            cpu_time=round(self.cpu_time, 6),
            max_rss=self.max_rss,
        )
        return True


def open_path(st: StageRun, path: str | bytes, flags: int, method: str) -> int:
    """Open a stdin/stdout/stderr path; a failure is a SpawnError naming the path."""
    try:
        return os.open(path, flags, 0o666)
    except OSError as e:
        shown = os.fsdecode(path)
        err = SpawnError(f"cannot open {shown!r} for {method}(): {e.strerror}", st.argv, e.errno)
        raise err from e


def is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
