"""Processes we started and must prove gone: liveness and stopping a process group.

Standard library only: the launcher's guard (launcher/guard.py, run by path) imports it too."""
from __future__ import annotations

import os
import signal
import time


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has finished; only its entry is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # reap it if it is our own finished child
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def stop_groups(pgids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM (+SIGCONT, for a stopped process) to each process group, one shared deadline of `grace`
    seconds, then SIGKILL; return the groups that still hold a live process (grandchildren count)."""
    live = live_groups(pgids)
    signal_groups(live, signal.SIGTERM)
    signal_groups(live, signal.SIGCONT)
    live = _wait_empty(live, grace)
    if live:
        signal_groups(live, signal.SIGKILL)
        live = _wait_empty(live, grace)
    return live


def _wait_empty(pgids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while pgids and time.monotonic() < deadline:
        time.sleep(0.05)
        pgids = live_groups(pgids)
    return pgids


def signal_groups(pgids, sig) -> None:
    """Send sig to each process group; groups already gone are skipped."""
    for pg in pgids:
        try:
            os.killpg(pg, sig)
        except (ProcessLookupError, PermissionError):
            pass


def live_groups(pgids) -> list[int]:
    """The process groups among `pgids` that still hold a process that is not a zombie."""
    pgids = [pg for pg in pgids if pg is not None]
    exists = []
    for pg in pgids:
        try:
            os.killpg(pg, 0)
            exists.append(pg)
        except ProcessLookupError:
            pass
        except PermissionError:
            exists.append(pg)
    if not exists or not os.path.isdir("/proc/self"):
        return exists
    live = set()
    wanted = set(exists)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and fields[0] not in (b"Z", b"X"):
            pgrp = int(fields[2])
            if pgrp in wanted:
                live.add(pgrp)
    return [pg for pg in exists if pg in live]
