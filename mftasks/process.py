"""Processes we started and must prove gone: liveness and stopping a process group."""
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
    _signal(pids, signal.SIGTERM)
    _wait_gone(pids, grace)
    _signal([p for p in pids if alive(p)], signal.SIGKILL)
    _wait_gone(pids, grace)
    return [p for p in pids if alive(p)]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
