"""What a launch returns: `LaunchResult` keyed by rank, the root-cause `RankFailure`, failure classes.

All or nothing: the launch is `ok` only when every rank exited 0. Otherwise `root_cause` is the first
failure by time (a rank's own exit, or the launcher's verdict: hang, timeout), and `retryable` says
whether running again can help.

A rank that exited by itself is classed from its own error record (`record.py`: the rank wrote its
uncaught exception, and whether it is a user error, to MFTASKS_ERROR_FILE), never from exception names
in its log. Without a record it is classed from how it ended (`classify`):

    killed by a signal                        -> killed (oom when the kernel's OOM killer left its mark)
    exit 2 (argparse / the mftasks CLI usage)  -> user_error
    out-of-memory / disk-full / collective-timeout text in the log -> oom / disk_full / comm_timeout
    exit 1 after a Python traceback           -> user_error (an uncaught exception in the program, or
                                                 python could not find the program: "No module named x")
    any other non-zero exit                   -> crash
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import GangFailedError
from .record import COMM_TIMEOUT as _COMM_TIMEOUT
from .record import DISK_FULL as _DISK_FULL
from .record import OOM as _OOM


class FailureClass(str, Enum):
    """Why a gang failed. Only USER_ERROR is not worth a retry."""

    USER_ERROR = "user_error"      # the program's own exception (unless it marked it retryable), usage (exit 2)
    KILLED = "killed"              # ended by a signal (not by the launcher)
    OOM = "oom"                    # killed with "Out of memory" / MemoryError
    DISK_FULL = "disk_full"        # ENOSPC / EDQUOT: space may be freed (or was a passing peak) before a retry
    COMM_TIMEOUT = "comm_timeout"  # a collective / HCCL / cluster timeout
    HANG = "hang"                  # no heartbeat progress for the hang timeout (or no first heartbeat)
    TIMEOUT = "timeout"            # the launch's overall timeout
    CRASH = "crash"                # any other non-zero exit, or an exception the program marked retryable

    @property
    def retryable(self) -> bool:
        return self is not FailureClass.USER_ERROR


USAGE_EXIT_CODE = 2  # argparse and the mftasks command line exit 2 on a usage / config error
UNCAUGHT_EXIT_CODE = 1  # Python's exit status after an uncaught exception

# "ValueError: x" or "mftasks.errors.ConfigError: x" or a bare "KeyboardInterrupt" at line start.
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Z]\w*(?:Error|Exception|Exit|Interrupt|Timeout))(?::\s|:?\s*$)")
_TRACEBACK = "Traceback (most recent call last):"
# The interpreter could not start the program ("python: No module named x", "can't open file"): fix the command.
_NO_PROGRAM = re.compile(r"^\S*python[\w.]*: (?:can't open file|No module named|can't find '__main__' module)")
_BENIGN = re.compile(r"Topology build timed out, retry", re.I)  # normal dynamic-cluster start-up noise
_KINDS = {"oom": "OOM", "disk_full": "DISK_FULL", "comm_timeout": "COMM_TIMEOUT"}


def tail_lines(path: str | None, n: int = 40, max_bytes: int = 65536) -> list[str]:
    """The last `n` lines of a log file (decoded leniently); [] if it cannot be read."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is probably cut
    return [ln.rstrip() for ln in lines if ln.strip()][-n:]


def final_exception(lines: list[str]) -> str | None:
    """The last line that reads like a Python exception ("ImportError: ..."), if any (shown, not classed)."""
    for line in reversed(lines):
        if _EXC_LINE.match(line.strip()) or line.startswith("error: "):  # the mftasks CLI's one-line errors
            return line.strip()
    return None


def record_exception(record: dict[str, Any]) -> str:
    """"ValueError: message" from a record (the short class name, as Python prints it)."""
    name = record["exception_type"].rsplit(".", 1)[-1]
    return f"{name}: {record['message']}" if record["message"] else name


def classify(returncode: int, lines: list[str], record: dict[str, Any] | None = None) -> FailureClass:
    """Failure class of a process that exited by itself with `returncode` (Popen convention: -N = signal N),
    from its error record when it wrote one (`record.read_record`), else from its exit and log."""
    text = [ln for ln in lines if not _BENIGN.search(ln)]
    oom = any(_OOM.search(ln) for ln in text)
    if returncode < 0:
        return FailureClass.OOM if oom and returncode == -9 else FailureClass.KILLED
    if record is not None:
        if not record["retryable"]:
            return FailureClass.USER_ERROR
        return FailureClass[_KINDS.get(record.get("kind"), "CRASH")]
    if returncode == USAGE_EXIT_CODE:
        return FailureClass.USER_ERROR
    if oom:
        return FailureClass.OOM
    if any(_DISK_FULL.search(ln) for ln in text):
        return FailureClass.DISK_FULL
    if any(_COMM_TIMEOUT.search(ln) for ln in text):
        return FailureClass.COMM_TIMEOUT
    if returncode == UNCAUGHT_EXIT_CODE and (_TRACEBACK in text or final_exception(text)
                                             or any(_NO_PROGRAM.match(ln) for ln in text)):
        return FailureClass.USER_ERROR
    return FailureClass.CRASH


@dataclass(frozen=True)
class RankFailure:
    """The root cause of a failed launch."""

    failure_class: FailureClass
    rank: int | None
    """The failing rank; None for the scheduler or a gang-wide verdict (timeout, interrupt)."""
    exitcode: int | None = None
    signal: str | None = None
    message: str = ""
    """One line: what happened, e.g. "exited with code 1" or "no heartbeat progress for 2.0 s"."""
    exception: str | None = None
    """The rank's exception: "Type: message" from its error record, else the last exception line of its log."""
    error_lines: tuple[str, ...] = ()
    """The last lines of the log."""
    log_path: str | None = None
    elapsed: float = 0.0
    """Seconds after the launch started."""
    ranks: tuple[int, ...] = ()
    """Ranks involved: the stalled ones for a hang, the running ones at a timeout, else (rank,)."""
    role: str = "worker"
    record_path: str | None = None
    """The rank's error record (MFTASKS_ERROR_FILE) when it wrote one; `exception` then comes from it."""

    @property
    def retryable(self) -> bool:
        return self.failure_class.retryable

    @property
    def who(self) -> str:
        if self.role == "scheduler":
            return "scheduler"
        if self.rank is None:
            return "gang"
        if len(self.ranks) > 1:
            return "ranks " + ", ".join(map(str, self.ranks))
        return f"rank {self.rank}"

    def describe(self) -> str:
        retry = "retryable" if self.retryable else "not retryable"
        text = f"{self.who} {self.message} after {self.elapsed:.2f} s [{self.failure_class.value}, {retry}]"
        if self.exception:
            first, *more = self.exception.splitlines() or [""]
            text += f": {first}" + (f" (+{len(more)} more lines)" if more else "")
        return text


@dataclass(frozen=True)
class RankOutcome:
    """How one process ended."""

    rank: int | None
    pid: int | None
    state: str
    """succeeded, failed (on its own) or stopped (by the launcher)."""
    exitcode: int | None
    signal: str | None
    log_path: str
    last_step: int | None = None
    """Last heartbeat step seen (None without heartbeats)."""
    duration: float = 0.0

    @property
    def status(self) -> str:
        if self.signal:
            return self.signal
        return "-" if self.exitcode is None else str(self.exitcode)


@dataclass
class LaunchResult:
    """Every rank's outcome and, on failure, the root cause."""

    ranks: dict[int, RankOutcome]
    root_cause: RankFailure | None
    scheduler: RankOutcome | None = None
    failures: list[RankFailure] = field(default_factory=list)
    """Every failure seen before the gang was stopped, in time order (root_cause is the first)."""
    started_at: float = 0.0
    """Wall-clock start (time.time())."""
    duration: float = 0.0
    attempt: int = 0
    log_dir: str = ""
    hang_timeout_used: float | None = None
    """The hang timeout in force at the end (given or derived), None without heartbeats."""

    @property
    def ok(self) -> bool:
        return self.root_cause is None

    @property
    def failure_class(self) -> FailureClass | None:
        return self.root_cause.failure_class if self.root_cause else None

    @property
    def retryable(self) -> bool:
        """True only for infrastructure failures (never for success or a user error)."""
        return self.root_cause is not None and self.root_cause.retryable

    @property
    def stalled_ranks(self) -> tuple[int, ...]:
        rc = self.root_cause
        return rc.ranks if rc is not None and rc.failure_class is FailureClass.HANG else ()

    def rank_rows(self, host: str | None = None) -> list[dict]:
        """The per-rank table, by rank: host, pid, exit, last step, log, and the failure class on the
        root cause's rank ("-" on the others); host defaults to this machine's name."""
        host = os.uname().nodename if host is None else host
        cause = self.root_cause
        return [{"rank": rank, "host": host, "pid": o.pid, "exit": o.status, "last_step": o.last_step,
                 "log": o.log_path,
                 "failure_class": cause.failure_class.value if cause is not None and cause.rank == rank else "-"}
                for rank, o in sorted(self.ranks.items())]

    def raise_for_failure(self) -> "LaunchResult":
        """Return self when ok, else raise GangFailedError (with .retryable)."""
        if not self.ok:
            raise GangFailedError(self)
        return self

    def summary(self, error_lines: int = 12) -> str:
        """A per-rank table and, on failure, the root cause with the last lines of its log."""
        rows = [("rank", "pid", "state", "exit", "last step", "log")]
        outs = [self.ranks[r] for r in sorted(self.ranks)] + ([self.scheduler] if self.scheduler else [])
        for o in outs:
            rows.append(("sched" if o.rank is None else str(o.rank), str(o.pid or "-"), o.state, o.status,
                         "-" if o.last_step is None else str(o.last_step), o.log_path))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
        if self.ok:
            lines.append(f"ok: {len(self.ranks)} ranks succeeded in {self.duration:.1f} s")
        else:
            rc = self.root_cause
            lines.append(f"root cause: {rc.describe()}")
            if rc.record_path:
                more = (rc.exception or "").splitlines()[1:]
                lines.append(f"error record {rc.record_path}" + (" (the whole message):" if more else ""))
                if more:
                    lines.extend("  | " + ln for ln in rc.exception.splitlines())
            if rc.log_path and rc.error_lines:
                lines.append(f"last lines of {rc.log_path}:")
                lines.extend("  | " + ln for ln in rc.error_lines[-error_lines:])
        return "\n".join(lines)
