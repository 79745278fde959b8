"""Pid files that prove who they name: pid + start time + command line of the process that was started.

A pid is reused once its process is gone; a stop command that trusted a bare pid could kill an unrelated
process.  The start time (clock ticks after boot, /proc/PID/stat field 22) is never the same for a later
process with the same pid, so a record is stopped only while both still match.  Standard library only.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import process

STOPPED = "stopped"
NOT_RUNNING = "not running"


def identity(pid: int) -> dict | None:
    """What identifies a live process: its start time and its command line; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in (...) may hold spaces: split after it
    return {"pid": pid, "start_time": int(fields[19]),
            "cmdline": [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]}


def write(path: Path, pid: int) -> None:
    """pid + start time + command line of the process just started (Popen returns after its exec)."""
    record = identity(pid) or {"pid": pid, "start_time": None, "cmdline": []}
    path.write_text(json.dumps(record) + "\n")


def read(path: Path) -> dict | None:
    """The record of a pid file; an older file holding only a pid gives {"pid": N} (unproven identity)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if isinstance(record, int) and not isinstance(record, bool):
        record = {"pid": record}
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int) or record["pid"] <= 1:
        return None
    return record


def identity_problem(record: dict) -> str | None:
    """None when the recorded pid is still the process that was started; else why it is not (or is gone)."""
    pid = record["pid"]
    now = identity(pid)
    if now is None or not process.alive(pid):
        return NOT_RUNNING
    cmd = " ".join(now["cmdline"])[:200]
    if record.get("start_time") is None or not record.get("cmdline"):
        return (f"pid {pid} is running `{cmd}`, but its pid file records no start time and command line to "
                "prove it is the process mftasks started; left it alone (stop it yourself if it is)")
    if now["start_time"] != record["start_time"] or now["cmdline"] != record["cmdline"]:
        return (f"pid {pid} is now another process (`{cmd}`, started at tick {now['start_time']}), not the "
                f"one mftasks started (`{' '.join(record['cmdline'])[:200]}`, tick {record['start_time']}); "
                "left it alone and removed the stale pid file")
    return None


def running(path: Path) -> dict | None:
    """The record of a pid file whose process is still the one that was started, else None."""
    record = read(path)
    return record if record and identity_problem(record) is None else None


def stop(path: Path, grace: float = 10.0) -> str:
    """Stop the process group recorded in a pid file if, and only if, its process is still the one that
    was started (start time and command line match): STOPPED, NOT_RUNNING, or why it was left alone."""
    record = read(path)
    if record is None:
        path.unlink(missing_ok=True)
        return NOT_RUNNING
    problem = identity_problem(record)
    if problem is not None and "records no start time" in problem:
        return problem  # keep the file: the process may be ours, started by an older mftasks
    path.unlink(missing_ok=True)
    if problem is not None:
        return problem
    process.stop_groups([record["pid"]], grace)
    return STOPPED
