"""Processes by PID and process group: is it alive, when did it start (so a recycled PID is not
mistaken for it), and ending a group: what a step left behind, or what a dead ralph left running."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from ralph.interrupt import CancelToken

GRACE = 2.0  # seconds between SIGINT, SIGTERM and SIGKILL: "a few seconds at most" end to end


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a group. Reads /proc because a zombie still answers kill(0),
    and where PID 1 does not reap, orphans stay zombies forever."""
    members = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = _stat_fields(entry.name)
            except OSError:
                continue
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in _DEAD:
                members.append(int(entry.name))
    return members


_DEAD = (b"Z", b"X")  # zombie, dead: in /proc, but no longer running


def _stat_fields(pid: int | str) -> list[bytes]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses): state first,
    then ppid, pgrp, …; OSError if there is no such process (or no /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return stat[stat.rfind(b")") + 2:].split()


def process_alive(pid: int) -> bool:
    """Not a zombie (True where /proc cannot tell)."""
    try:
        fields = _stat_fields(pid)
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")
    except OSError:
        return True
    return (fields[0] if fields else b"") not in _DEAD


def group_alive(pgid: int) -> bool:
    if not signal_group(pgid, 0):
        return False
    return not os.path.isdir("/proc") or bool(group_members(pgid))


def reap_group(pgid: int, grace: float, cancel: CancelToken | None = None) -> None:
    """Background jobs the child left in its group (output redirected away) are ended too:
    SIGTERM, then SIGKILL ``grace`` seconds later (at once after a second Ctrl-C)."""
    if not group_alive(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and not (cancel is not None and cancel.urgent):
        if not group_alive(pgid):
            return
        time.sleep(0.01)
    signal_group(pgid, signal.SIGKILL)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# How far a child's start time taken by ralph around its spawn may be from what /proc says of it
# (clock ticks): a PID handed out again within a second of the first process's start is not a risk.
_SAME_START_TICKS = _TICKS


def boot_ticks() -> str:
    """Now, as /proc/PID/stat counts a process's start: clock ticks since boot. Taken just before a
    spawn it stands for the child's start time without reading /proc, which blocks while the child is
    still exec'ing."""
    return str(time.clock_gettime_ns(time.CLOCK_BOOTTIME) * _TICKS // 1_000_000_000)


def same_start(recorded: str | None, current: str | None) -> bool:
    """``current`` (from /proc) is the start time ``recorded`` then (exact, or taken by ralph at the spawn)."""
    if recorded is None or current is None:
        return True
    try:
        return abs(int(current) - int(recorded)) <= _SAME_START_TICKS
    except ValueError:
        return current == recorded


def process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), so a recycled PID is not mistaken for it."""
    try:
        return _stat_fields(pid)[19].decode()
    except (OSError, IndexError):
        return None


def end_leftover_group(pgid: int, leader_start: str | None, grace: float = GRACE) -> bool:
    """End what a dead ralph left running: the process group of a step it had started. True if
    something was still alive. The group is only touched while it is provably the same one: its
    leader is alive with the recorded start time, or the leader is gone and members remain (a
    PID that is some group's ID is never handed out again while that group lives)."""
    if leader_start is None or not group_alive(pgid):
        return False
    if not same_start(leader_start, process_start(pgid)):
        return False  # the PID now belongs to an unrelated process
    reap_group(pgid, grace)
    return True
