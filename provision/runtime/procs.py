"""The processes provision started, through psutil: who they are, who their children are, stopping them.

A PID is only signalled while it is provably the program we started: its command line and create time
must equal what was recorded, so a reused PID is left alone. Nothing is ever killed by name.

A started server runs in a session of its own, so one process group (led by the server's PID) holds it
and every process it forks. Stopping sends SIGTERM to the leader (xinference then stops its children
itself) and SIGKILLs the whole group after a grace period: SIGKILL of the leader alone orphans the model
processes, which keep ports and memory. Descendants that moved to sessions of their own (the cluster
supervisor's actor pool and REST API) are listed before the SIGTERM, while their parent is provably ours,
and each is only signalled while its create time is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Iterable, Protocol

import psutil

from ..errors import ServerError

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Recorded(Protocol):
    """What a state record keeps of a process: enough to prove it is still that process."""

    pid: int | None
    cmdline: list[str]
    create_time: float | None
    start_ticks: int | None  # older state files: /proc/<pid>/stat field 22


@dataclass(frozen=True)
class Seen:
    """A process as it was when first seen: its PID and create time are its identity from then on."""

    pid: int
    create_time: float


def _process(pid: int | None) -> psutil.Process | None:
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # holds no resources, ignores signals: gone
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    return _process(pid) is not None


def identity(pid: int) -> tuple[list[str], float] | None:
    """(command line, create time) of a live process, or None."""
    proc = _process(pid)
    if proc is None:
        return None
    try:
        return proc.cmdline(), proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def describe(pid: int) -> tuple[str, str]:
    """(program name, user) of a process, "?" for what cannot be read (gone, another PID namespace)."""
    proc = _process(pid)
    if proc is None:
        return "?", "?"
    try:
        name = proc.name()
    except psutil.Error:
        name = "?"
    try:
        user = proc.username()
    except (psutil.Error, KeyError):  # KeyError: a uid without a passwd entry
        user = "?"
    return name, user


def wait_for_cmdline(pid: int, running, seconds: float = 5.0) -> tuple[list[str], float] | None:
    """Identity of a process just started. Popen can return while the kernel is still setting up the new
    program's arguments (its cmdline reads empty for a moment), so wait for them while `running()`."""
    deadline = time.monotonic() + seconds
    while True:
        found = identity(pid)
        if (found and found[0]) or not running() or time.monotonic() >= deadline:
            return found
        time.sleep(0.01)


def is_same_process(record: Recorded) -> bool:
    """PID alive, same command line, same create time: the very process that was recorded."""
    if not record.pid or not record.cmdline:
        return False
    found = identity(record.pid)
    if found is None or found[0] != list(record.cmdline):
        return False
    cmdline, created = found
    if record.create_time is not None:
        return abs(created - record.create_time) < 0.01
    if record.start_ticks is not None:  # a state written before create_time was recorded
        return round((created - psutil.boot_time()) * _CLOCK_TICKS) == record.start_ticks
    return False


def recorded_create_time(record: Recorded) -> float | None:
    """When the recorded process was started (from its start ticks for a state written by 0.1)."""
    if record.create_time is not None:
        return record.create_time
    if record.start_ticks is not None:
        return psutil.boot_time() + record.start_ticks / _CLOCK_TICKS
    return None


def born_since(pid: int, since: float) -> bool:
    """The process started at or after `since` (so a group it is in cannot predate the recorded leader)."""
    found = identity(pid)
    return found is not None and found[1] >= since - 0.01


def group_members(pgid: int | None) -> list[int]:
    """Live members of a process group."""
    if not pgid:
        return []
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def descendants(pid: int) -> list[Seen]:
    """Every live descendant of `pid`, in any session, as first seen."""
    proc = _process(pid)
    if proc is None:
        return []
    found = []
    with contextlib.suppress(psutil.Error):
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE:
                    found.append(Seen(child.pid, child.create_time()))
    return found


def still(seen: Seen) -> bool:
    """The process seen earlier still runs (same PID, same create time)."""
    proc = _process(seen.pid)
    try:
        return proc is not None and abs(proc.create_time() - seen.create_time) < 0.01
    except psutil.Error:
        return False


def command_lines(pids: Iterable[int]) -> list[list[str]]:
    lines = []
    for pid in pids:
        found = identity(pid)
        if found:
            lines.append(found[0])
    return lines


def stop_tree(pid: int, pgid: int | None, grace: float, reap=lambda pid: None) -> str:
    """SIGTERM `pid`, wait for its group and descendants, then SIGKILL what is left. The caller proved
    identity. `pgid` counts only when the group is led by `pid` (a group provision created); `reap` is
    called while waiting so a child of ours does not linger as a zombie. Says what happened."""
    pgid = pgid if pgid == pid else None
    seen = descendants(pid)
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise ServerError(f"not allowed to stop pid {pid}: {exc.strerror}", hint="run as the user who started it") from exc
    if _wait_gone(pid, pgid, seen, grace, reap):
        return f"stopped in {time.monotonic() - started:.1f} s"
    with contextlib.suppress(ProcessLookupError):
        if pgid:
            os.killpg(pgid, signal.SIGKILL)  # the group: killing the leader alone orphans the models
        else:
            os.kill(pid, signal.SIGKILL)
    for child in seen:  # those in sessions of their own, with the groups they lead
        if not still(child):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(child.pid) == child.pid:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                os.kill(child.pid, signal.SIGKILL)
    if not _wait_gone(pid, pgid, seen, 10.0, reap):
        left = sorted({pid, *group_members(pgid)} if alive(pid) else set(group_members(pgid)))
        left += [c.pid for c in seen if still(c) and c.pid not in left]
        raise ServerError(f"pids {' '.join(map(str, left))} survived SIGKILL", hint="see `ps -o pid,stat,cmd -p PID`")
    return f"killed after {grace:g} s (did not stop on SIGTERM)"


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM a process group provision created whose leader is gone, wait, then SIGKILL what is left. The
    caller proved the members are provision's (born after the leader it recorded)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _wait_gone(pid: int, pgid: int | None, seen: list[Seen], seconds: float, reap) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        reap(pid)
        if not alive(pid) and not group_members(pgid) and not any(still(c) for c in seen):
            reap(pid)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
