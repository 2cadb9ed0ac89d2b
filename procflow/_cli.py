"""``procflow run``: one command or a pipeline under supervision, from the shell.

    procflow run [--timeout S] [--cwd DIR] [--env K=V]... [--log console|json] [--summary] \\
        -- CMD [ARG...] ['|' CMD [ARG...]]...

Exit status: the pipeline's; 128+N for a signal; 124 on --timeout; 127 for a
program not found, 126 for one that cannot be executed; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._command import Command, Proc
from ._errors import Cancelled, ExitError, ProcTimeout, SpawnError
from ._result import Result
from ._supervisor import Supervisor

__all__ = ["main"]


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, status 2, like argparse but testable
        raise _Usage(message)


def _parser() -> _Parser:
    p = _Parser(prog="procflow", description="Run child processes without deadlocks, leaks or hidden failures.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser(
        "run",
        help="run a command or a pipeline under supervision",
        description="Run CMD (or a pipeline: CMD '|' CMD ...) under supervision. Quote the '|'.",
    )
    r.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop the whole process tree after SECONDS (exit 124)"
    )
    r.add_argument("--cwd", metavar="DIR", help="working directory of every stage")
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="set an environment variable (repeatable)")
    r.add_argument("--log", choices=("console", "json"), help="render every lifecycle event to stderr")
    r.add_argument("--summary", action="store_true", help="print a per-stage table on stderr at the end")
    r.add_argument("--kill-grace", type=float, metavar="SECONDS", help="time between SIGTERM and SIGKILL (default 2)")
    r.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARG...] ['|' CMD [ARG...]]...")
    return p


def _stages(argv: list[str]) -> list[list[str]]:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise _Usage("no command given (usage: procflow run [options] -- CMD [ARG...] ['|' CMD ...])")
    stages: list[list[str]] = [[]]
    for a in argv:
        if a == "|":
            stages.append([])
        else:
            stages[-1].append(a)
    for i, s in enumerate(stages):
        if not s:
            raise _Usage(f"stage {i + 1} of the pipeline is empty")
    return stages


def _configure_logging(kind: str) -> None:
    import structlog

    renderer: Any = structlog.processors.JSONRenderer() if kind == "json" else structlog.dev.ConsoleRenderer(
        colors=False
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _summary(result: Result) -> str:
    rows = [("stage", "argv", "pid", "status", "seconds", "cpu", "max_rss_MiB")]
    for i, st in enumerate(result.stages, 1):
        rows.append(
            (
                str(i),
                " ".join(st.argv)[:40],
                str(st.pid),
                st.status,
                f"{st.duration:.3f}",
                f"{st.cpu_time:.3f}",
                f"{st.max_rss / 2**20:.1f}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) for r in rows)


def _exit_status(result: Result) -> int:
    rc = result.returncode
    return 128 - rc if rc < 0 else rc


class _Terminated(BaseException):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _stop_orphans(grace: float) -> None:
    """Stop every child still alive after procflow itself was interrupted.

    A signal that lands while a stage is being spawned can interrupt the spawn
    after the child started and before its pid was returned: the library then
    cannot stop it. ``procflow run`` starts nothing but the pipeline, so any
    child left here is one of its stages (or theirs).
    """
    import psutil

    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = _parser().parse_args(args_in)
        if ns.command != "run":
            raise _Usage("a command is required: procflow run [options] -- CMD ...")
        stages = _stages(list(ns.argv))
        if ns.timeout is not None and not ns.timeout > 0:
            raise _Usage(f"--timeout must be > 0, got {ns.timeout}")
        if ns.kill_grace is not None and ns.kill_grace < 0:
            raise _Usage(f"--kill-grace must be >= 0, got {ns.kill_grace}")
        env = {}
        for item in ns.env:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise _Usage(f"--env takes K=V, got {item!r}")
            env[k] = v
        cmd: Command = Proc(*stages[0])
        for s in stages[1:]:
            cmd = cmd | Proc(*s)
        cmd = cmd.stdin_inherit()
        if ns.cwd:
            cmd = cmd.cwd(ns.cwd)
        if env:
            cmd = cmd.env_update(env)
        if ns.timeout is not None:
            cmd = cmd.timeout(ns.timeout)
        if ns.kill_grace is not None:
            cmd = cmd.kill_grace(ns.kill_grace)
        cmd = cmd.unchecked()
    except (_Usage, ValueError, TypeError) as e:
        print(f"procflow: error: {e}", file=sys.stderr)
        return 2
    if ns.log:
        _configure_logging(ns.log)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    result: Result | None = None
    status = 0
    try:
        with Supervisor():
            result = cmd.run()
            status = _exit_status(result)
    except SpawnError as e:
        print(f"procflow: {e}", file=sys.stderr)
        return 126 if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR) else 127
    except ProcTimeout as e:
        print(f"procflow: {e}", file=sys.stderr)
        result, status = e.result, 124
    except ExitError as e:  # not raised with unchecked(), kept for safety
        result, status = e.result, _exit_status(e.result)
    except Cancelled as e:
        result, status = e.result, 130
    except KeyboardInterrupt:
        status = 128 + signal.SIGINT
    except _Terminated:
        status = 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    if status in (128 + signal.SIGINT, 128 + signal.SIGTERM) and result is None:
        _stop_orphans(2.0 if ns.kill_grace is None else ns.kill_grace)
    if ns.summary and result is not None:
        print(_summary(result), file=sys.stderr)
    return status


def entry() -> None:
    sys.exit(main())
