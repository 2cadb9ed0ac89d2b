"""run_all: many commands at once, at most ``jobs`` at a time."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence

from ._cancel import Cancel
from ._command import Command
from ._errors import Cancelled, ProcError
from ._result import Result
from ._supervisor import Supervisor, current_supervisor

__all__ = ["run_all"]


def run_all(
    procs: Iterable[Command],
    jobs: int | None = None,
    fail_fast: bool = True,
    *,
    cancel: Cancel | None = None,
    supervisor: Supervisor | None = None,
) -> list[Result]:
    """Run Procs/Pipelines concurrently; results in input order.

    With ``fail_fast`` the first failure stops the others (their trees are
    stopped and reaped) and is raised; without it all run to the end and the
    failures are raised together as an ``ExceptionGroup``.

    >>> from procflow import Proc, run_all
    >>> [r.stdout for r in run_all([Proc("echo", str(i)).stdout_capture() for i in range(3)], jobs=2)]
    [b'0\\n', b'1\\n', b'2\\n']
    """
    items: Sequence[Command] = list(procs)
    for p in items:
        if not isinstance(p, Command):
            raise TypeError(f"run_all() takes Procs and Pipelines, not {type(p).__name__}")
    if jobs is None:
        jobs = os.cpu_count() or 1
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError("jobs must be an int or None")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if cancel is not None and not isinstance(cancel, Cancel):
        raise TypeError("cancel must be a procflow.Cancel or None")
    sup = supervisor or current_supervisor()
    if not items:
        return []
    group = Cancel()
    unlink = cancel._subscribe(lambda: group.cancel(cancel.reason if cancel else None)) if cancel else None
    results: list[Result | None] = [None] * len(items)
    errors: dict[int, BaseException] = {}
    lock = threading.Lock()
    next_index = 0
    first_failure: list[int] = []

    def worker() -> None:
        nonlocal next_index
        while True:
            with lock:
                # Once cancelled, stop picking after the first Cancelled is recorded (a command run
                # with a cancelled token raises Cancelled without spawning): so that a token
                # cancelled before run_all still gives Cancelled, not "some commands did not run".
                if next_index >= len(items) or (fail_fast and first_failure) or (group.cancelled and errors):
                    return
                i = next_index
                next_index += 1
            try:
                results[i] = items[i].run(cancel=group, supervisor=sup)
            except BaseException as e:  # noqa: BLE001 - collected and raised in the caller
                with lock:
                    if isinstance(e, Cancelled) and group.cancelled and (first_failure or cancel is not None):
                        errors.setdefault(i, e)
                        continue
                    errors[i] = e
                    if fail_fast and not first_failure:
                        first_failure.append(i)
                        group.cancel("run_all: another command failed")
                    if not isinstance(e, Exception):
                        first_failure.append(i)
                        group.cancel("run_all: interrupted")

    threads = [
        threading.Thread(target=worker, name=f"procflow-run_all[{n}]", daemon=True)
        for n in range(min(jobs, len(items)))
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:
        group.cancel("run_all: the caller was interrupted")
        for t in threads:
            t.join()
        raise
    finally:
        if unlink is not None:
            unlink()
    if first_failure:
        raise errors[first_failure[0]]
    if errors:
        if cancel is not None and cancel.cancelled:
            raise next(iter(errors.values()))
        failed = [errors[i] for i in sorted(errors)]
        excs = [e for e in failed if isinstance(e, Exception)]
        raise ExceptionGroup(f"{len(excs)} of {len(items)} commands failed", excs)
    return [r for r in results if r is not None] if all(r is not None for r in results) else _missing(results)


def _missing(results: list[Result | None]) -> list[Result]:
    raise ProcError("run_all: some commands did not run")  # pragma: no cover - guarded by cancel
