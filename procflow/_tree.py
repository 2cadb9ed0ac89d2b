"""Stopping a process tree: find it, signal it, wait, escalate, reap.

The tree is every stage that has not exited, its descendants (psutil), the
other members of the run's process group, and, when the run is stopped by a
timeout, a cancel or an error, whoever still holds its pipes (a grandchild
that called setsid). A pid is signalled only while it cannot have been reused:
our own stages are unreaped (zombies keep their pid and group id), other
processes go through psutil, which checks the creation time.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import TYPE_CHECKING

import psutil

from ._log import emit
from ._stage import StageRun

if TYPE_CHECKING:
    from ._pumps import Drainer, Feeder

__all__ = ["TreeControl", "held_open_pids"]


class TreeControl:
    """The stopping half of an Execution."""

    stages: list[StageRun]
    pgid: int | None
    pumps: list[Feeder | Drainer]
    out_fd: int | None
    in_fd: int | None
    _stop_reason: str | None

    def _poll(self, fds: list[tuple[int, int]], timeout: float | None) -> set[int]:
        raise NotImplementedError

    def reap_exited(self) -> bool:
        raise NotImplementedError

    def held_open_pids(self, fds: list[int]) -> list[int]:
        return held_open_pids(fds)


    def _descendants(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for st in self.stages:
            if st.exited or not st.pid:
                continue
            try:
                procs.extend(psutil.Process(st.pid).children(recursive=True))
            except psutil.Error:
                pass
        return procs

    def _signal_tree(self, sig: int, procs: list[psutil.Process]) -> None:
        live = [st for st in self.stages if st.pid and not st.reaped]
        # The group can be signalled safely while one of our stages (its leader or
        # a member, zombie or not) is unreaped: its number cannot be reused then.
        if self.pgid is not None and live:
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for st in live:
            if st.watch is not None:
                st.watch.send_signal(sig)
            else:
                # Interrupted between the spawn and its exit watch: the pid is
                # unreaped, so it cannot have been recycled; signal it directly.
                try:
                    os.kill(st.pid, sig)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.send_signal(sig)  # psutil refuses a pid that was reused
            except (psutil.Error, OSError):
                pass

    def kill_tree(self, grace: float, log: bool = True) -> None:
        """SIGTERM the whole tree, SIGKILL what is left after ``grace``, reap the stages.

        The tree is every unexited stage, its descendants (found with psutil:
        children that called setsid have left the group) and whatever is still
        in the run's process group (orphans of a stage that already exited).
        ``log=False`` when the caller asked for the stop (leaving a ``lines()``
        loop early is not worth a warning).
        """
        # The event names the last stage that was spawned (a later one may have failed to start).
        last = next((st for st in reversed(self.stages) if st.pid), self.stages[-1])
        procs = self._tree_snapshot()
        if procs or any(st.pid and not st.exited for st in self.stages):
            if log:
                emit("proc.kill", pid=last.pid, argv=list(last.argv), signal="SIGTERM")
            self._signal_tree(signal.SIGTERM, procs)
            end = time.monotonic() + grace
            while True:
                self.reap_exited()
                live = [st for st in self.stages if st.pid and not st.exited and st.watch is not None]
                left = end - time.monotonic()
                if not live or left <= 0:
                    break
                self._poll([(st.watch.fd, select.POLLIN) for st in live if st.watch], left)
            procs = _wait_gone(procs, end)
            if procs or any(st.pid and not st.exited for st in self.stages):
                if log:
                    emit("proc.kill", pid=last.pid, argv=list(last.argv), signal="SIGKILL")
                self._signal_tree(signal.SIGKILL, procs)
        for st in self.stages:
            if st.pid and not st.reaped:
                st.reap(block=True)

    def _tree_snapshot(self) -> list[psutil.Process]:
        """Descendants of the live stages, plus the other members of our process group."""
        procs = {p.pid: p for p in self._descendants()}
        ours = {st.pid for st in self.stages}
        # Whoever holds our pipes came from the tree, even a grandchild that called
        # setsid after its parent exited. Worth a /proc scan when the run is being
        # stopped by a timeout, a cancel or an error, not when the caller closes early.
        if self._stop_reason not in (None, "stopped"):
            fds = [p.fd for p in self.pumps if not p.done.is_set()]
            fds += [fd for fd in (self.out_fd, self.in_fd) if fd is not None]
            for pid in self.held_open_pids(fds):
                if pid not in ours and pid not in procs:
                    try:
                        procs[pid] = psutil.Process(pid)
                    except psutil.Error:
                        pass
        # The group id is safe to look for while one of our stages is unreaped.
        if self.pgid is not None and any(st.pid and not st.reaped for st in self.stages):
            for pid in psutil.pids():
                if pid in ours or pid in procs:
                    continue
                try:
                    if os.getpgid(pid) == self.pgid:
                        procs[pid] = psutil.Process(pid)
                except (OSError, psutil.Error):
                    continue
        return list(procs.values())


def _wait_gone(procs: list[psutil.Process], end: float) -> list[psutil.Process]:
    """Wait until ``end`` for processes that are not our children to die; returns the living.

    They cannot be waited for (a pidfd of a non-child would do, but psutil's
    create-time check is what guards against reuse here), so this polls with a
    growing interval; it runs only while stopping a tree. A zombie counts as
    dead: its parent, not us, has to reap it.
    """
    delay = 0.005
    while True:
        procs = [p for p in procs if _alive(p)]
        left = end - time.monotonic()
        if not procs or left <= 0:
            return procs
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def held_open_pids(fds: list[int]) -> list[int]:
    """The pids (other than ours) holding the other end of these pipes (a /proc scan)."""
    """The pids (other than ours) holding the other end of these pipes."""
    inodes = set()
    for fd in fds:
        try:
            inodes.add(os.fstat(fd).st_ino)
        except OSError:
            pass
    if not inodes:
        return []
    wanted = {f"pipe:[{i}]" for i in inodes}
    me = os.getpid()
    holders = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == me:
            continue
        try:
            with os.scandir(f"/proc/{pid}/fd") as entries:  # closed on the early break too
                for entry in entries:
                    try:
                        if os.readlink(entry.path) in wanted:
                            holders.append(pid)
                            break
                    except OSError:
                        continue
        except OSError:
            continue
    return sorted(holders)
