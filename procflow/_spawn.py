"""Spawning: turning stage specs into children wired to their fds.

Children are started with ``subprocess.Popen`` (CPython's vfork/posix_spawn
path: no ``preexec_fn``), ``close_fds=True`` and ``restore_signals=True`` (the
child gets SIGPIPE back at its default). procflow reaps them itself with
``os.wait4`` (for ``cpu_time`` and ``max_rss``), so the ``Popen`` object is
used for the spawn only.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C half of signal, no stubs
import errno
import os
import select
import signal
import subprocess
import threading
from typing import Any

from ._errors import SpawnError
from ._secret import REDACTED, Secret, display_arg, reveal
from ._spec import StageSpec

__all__ = ["spawn", "ExitWatch", "describe_spawn_error", "check_cwd"]

HAVE_PIDFD = hasattr(os, "pidfd_open")
_SIGINT = int(signal.SIGINT)


def check_cwd(spec: StageSpec) -> None:
    """Name a bad cwd before anything is spawned (Popen would blame the program)."""
    if spec.cwd is None:
        return
    cwd = spec.cwd
    shown = os.fsdecode(cwd)
    try:
        st = os.stat(cwd)
    except FileNotFoundError as e:
        raise SpawnError(f"working directory does not exist: {shown!r}", spec.display_argv, errno.ENOENT) from e
    except OSError as e:
        raise SpawnError(f"working directory {shown!r}: {e.strerror}", spec.display_argv, e.errno) from e
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode):
        raise SpawnError(f"working directory is not a directory: {shown!r}", spec.display_argv, errno.ENOTDIR)
    if not os.access(cwd, os.X_OK):
        raise SpawnError(f"working directory is not accessible: {shown!r} (permission denied)",
                         spec.display_argv, errno.EACCES)


def describe_spawn_error(e: OSError, spec: StageSpec, env: dict[Any, Any] | None) -> SpawnError:
    argv = spec.display_argv
    prog = argv[0]
    has_slash = "/" in prog
    if isinstance(e, FileNotFoundError):
        if has_slash:
            where = ""
            if spec.cwd is not None and not os.path.isabs(prog):
                where = f" (relative to the working directory {os.fsdecode(spec.cwd)!r})"
            msg = f"program not found: {prog!r}{where}"
            if os.path.exists(prog):
                msg = f"cannot execute {prog!r}: its interpreter (#! line) or loader was not found"
        else:
            path = os.pathsep.join(os.fsdecode(p) for p in os.get_exec_path(env))
            msg = f"command not found: {prog!r} (searched PATH={path})"
    elif isinstance(e, PermissionError):
        msg = f"permission denied: cannot execute {prog!r}"
    elif e.errno == errno.ENOEXEC:
        msg = f"cannot execute {prog!r}: not an executable format (a script without a #! line?)"
    elif e.errno == errno.EMFILE or e.errno == errno.ENFILE:
        msg = f"cannot start {prog!r}: too many open files ({e.strerror})"
    else:
        msg = f"cannot start {prog!r}: {e.strerror or e}"
    err = SpawnError(msg, argv, e.errno)
    err.__cause__ = e
    return err


def spawn(
    spec: StageSpec,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    process_group: int | None,
    env: dict[Any, Any] | None,
) -> int:
    """Start one child; returns its pid. Raises SpawnError."""
    argv = [reveal(a) for a in spec.argv]
    try:
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=spec.cwd,
            env=env,
            close_fds=True,
            pass_fds=spec.pass_fds,
            restore_signals=True,
            process_group=process_group,
        )
    except OSError as e:
        if isinstance(spec.argv[0], Secret) and e.filename is not None:
            # The chained OSError would print the secret program name in a traceback.
            e.filename = REDACTED
        raise describe_spawn_error(e, spec, env) from e
    except (ValueError, subprocess.SubprocessError) as e:
        raise SpawnError(f"cannot start {display_arg(spec.argv[0])!r}: {e}", spec.display_argv, None) from e
    # procflow reaps this pid itself (os.wait4); a non-None returncode keeps
    # Popen.__del__ and subprocess._cleanup() from ever waiting on it.
    popen.returncode = 0
    return popen.pid


class _DeferredSigint:
    """Hold back a Ctrl-C that arrives while a child is being spawned.

    Python runs signal handlers as soon as a call returns: a KeyboardInterrupt
    raised just after ``fork_exec`` returned, before Popen stored the pid, would
    leave a child nobody knows about. While spawning, the main thread's default
    SIGINT handler is swapped for one that only records the signal; the
    KeyboardInterrupt is raised once the pid is known, and the abort path stops
    the child. Custom handlers (and other threads) are left alone.
    """

    def __init__(self) -> None:
        self.pending = False
        self.active = False

    def _record(self, signum: int, frame: object) -> None:
        self.pending = True

    def __enter__(self) -> _DeferredSigint:
        # _signal, not signal: the public wrappers convert to enums, a cost on every spawn.
        if threading.current_thread() is threading.main_thread():
            try:
                if _signal.getsignal(_SIGINT) is signal.default_int_handler:
                    _signal.signal(_SIGINT, self._record)
                    self.active = True
            except (ValueError, OSError):
                self.active = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            _signal.signal(_SIGINT, signal.default_int_handler)
            self.active = False
            if self.pending and exc[0] is None:
                raise KeyboardInterrupt


def defer_sigint() -> _DeferredSigint:
    return _DeferredSigint()


class ExitWatch:
    """An fd that becomes readable when a child exits, without reaping it.

    A pidfd where the kernel has one; elsewhere a thread blocked in
    ``waitid(WNOWAIT)`` that writes to a pipe. Either way the pid cannot be
    recycled before procflow reaps it, so signalling it is always safe.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd: int | None = None
        self._pipe: tuple[int, int] | None = None
        if HAVE_PIDFD and not _force_no_pidfd:
            try:
                self.pidfd = os.pidfd_open(pid)
            except OSError:
                self.pidfd = None
        if self.pidfd is None:
            r, w = os.pipe()
            self._pipe = (r, w)
            t = threading.Thread(target=self._waitid, args=(pid, w), name=f"procflow-waitid[pid={pid}]",
                                 daemon=True)
            t.start()

    @staticmethod
    def _waitid(pid: int, w: int) -> None:
        try:
            while True:
                try:
                    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    break
        finally:
            os.write(w, b"x")
            os.close(w)

    @property
    def fd(self) -> int:
        if self.pidfd is not None:
            return self.pidfd
        assert self._pipe is not None
        return self._pipe[0]

    def exited(self) -> bool:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(0))

    def send_signal(self, sig: int) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        elif self._pipe is not None:
            os.close(self._pipe[0])
            self._pipe = None


#: Tests set this to exercise the waitid fallback on Linux.
_force_no_pidfd = False

