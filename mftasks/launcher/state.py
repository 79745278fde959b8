"""`RankState`: what the launcher knows about one process it started, while it runs.

State diagram of one process (the scheduler has the same, without heartbeats):

    RUNNING --exit 0--------------------> SUCCEEDED
    RUNNING --exit != 0 / signal--------> FAILED       (the first by time is the gang's root cause)
    RUNNING --stopped by the launcher---> STOPPED      (another rank failed, hang, timeout, interrupt)
"""
from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass, field
from enum import Enum


class Phase(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class RankState:
    """One started process: a worker rank (rank >= 0) or the dynamic-cluster scheduler (rank None)."""

    rank: int | None
    local_rank: int | None
    argv: tuple[str, ...]
    env: dict[str, str]
    log_path: str
    heartbeat_path: str | None = None
    error_path: str | None = None
    """MFTASKS_ERROR_FILE: where the process writes its error record (record.py) if it fails."""
    proc: subprocess.Popen | None = None
    phase: Phase = Phase.RUNNING
    started_mono: float = 0.0
    started_wall: float = 0.0
    exit_mono: float | None = None
    returncode: int | None = None
    # heartbeat progress, in the launcher's monotonic clock
    last_step: int | None = None
    last_progress: float | None = None
    intervals: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "scheduler" if self.rank is None else f"rank {self.rank}"

    @property
    def is_scheduler(self) -> bool:
        return self.rank is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def pgid(self) -> int | None:
        """Each process leads its own session and process group (start_new_session=True)."""
        return self.pid

    @property
    def exited(self) -> bool:
        return self.returncode is not None

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    @property
    def exitcode(self) -> int | None:
        return self.returncode if self.returncode is not None and self.returncode >= 0 else None

    def observe_heartbeat(self, now: float) -> bool:
        """Read HEARTBEAT_DIR/rank_N/heartbeat.json; True when the step changed since the last look.

        A file is this process's when it carries its pid, or (written by a descendant) when it was
        written after the process started; a previous attempt's file is ignored. Progress times are
        taken from the launcher's own clock.
        """
        if self.heartbeat_path is None:
            return False
        try:
            with open(self.heartbeat_path, encoding="utf-8") as f:
                beat = json.load(f)
            step, wrote = int(beat["step"]), float(beat.get("time", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if beat.get("pid") != self.pid and wrote < self.started_wall:
            return False  # written before this process started: a previous attempt's
        if step == self.last_step:
            return False
        if self.last_progress is not None:
            self.intervals.append(now - self.last_progress)
            del self.intervals[:-256]
        self.last_step, self.last_progress = step, now
        return True


