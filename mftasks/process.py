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


def stop_groups(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM each process group, one shared deadline, then SIGKILL; return the pids still alive after."""
    signal_groups(pids, signal.SIGTERM)
    _wait_gone(pids, grace)
    signal_groups([p for p in pids if alive(p)], signal.SIGKILL)
    _wait_gone(pids, grace)
    return [p for p in pids if alive(p)]


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)


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
