"""`RankState`: what the launcher knows about one process it started, while it runs.

State diagram of one process (the scheduler has the same, without heartbeats):

    RUNNING --exit 0--------------------> SUCCEEDED
    RUNNING --exit != 0 / signal--------> FAILED       (the first by time is the gang's root cause)
    RUNNING --stopped by the launcher---> STOPPED      (another rank failed, hang, timeout, interrupt)
"""
from __future__ import annotations

import json
import re
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
    progress_re: re.Pattern | None = None
    """With the spec's progress_pattern: progress is read from this process's log lines, not a heartbeat."""
    # heartbeat (or log-line) progress, in the launcher's monotonic clock
    last_step: int | None = None
    last_progress: float | None = None
    intervals: list[float] = field(default_factory=list)
    log_offset: int = 0
    """How far the log has been read for progress lines (complete lines only)."""

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

    def observe_progress(self, now: float) -> bool:
        """Read this process's progress (its log lines with progress_re, else its heartbeat file); True
        when it moved since the last look."""
        return self.observe_log(now) if self.progress_re is not None else self.observe_heartbeat(now)

    def observe_log(self, now: float) -> bool:
        """Every complete line added to the log since the last look that matches progress_re is progress;
        its `step` group (when the pattern has one) becomes last_step."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                chunk = f.read()
        except OSError:
            return False
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            return False
        self.log_offset += end
        moved = False
        for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
            m = self.progress_re.search(line)
            if m is None:
                continue
            moved = True
            step = m.groupdict().get("step")
            self.last_step = int(step) if step is not None and step.isdigit() else (self.last_step or 0) + 1
        if moved:
            self._progressed(now)
        return moved

    def _progressed(self, now: float) -> None:
        if self.last_progress is not None:
            self.intervals.append(now - self.last_progress)
            del self.intervals[:-256]
        self.last_progress = now

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
        self.last_step = step
        self._progressed(now)
        return True


