"""`LaunchSpec`: what to start, how many, in which mode, and how to watch it.

A `TypedConfig`: every problem with the fields themselves is collected when the spec is built and raised
once as `LaunchSpecError`. Problems with the machine (port taken, program missing, rank table...) are found by
`preflight.preflight()` just before starting. The spec is frozen; a retry is
`spec.replace(attempt=spec.attempt + 1)`.

Rank numbering (`local_ranks()`):

- dynamic-cluster (msrun's engine): local rank i on node n is global rank n * nproc_per_node + i;
  DEVICE_ID is the i-th device of `device_range` (default 0..nproc_per_node-1).
- rank-table, one node (run_distribute_single_node.sh): for i in [start, end): DEVICE_ID=i,
  RANK_ID=i-start.
- rank-table, several nodes (run_distribute_multi_node.sh): the range is in *global rank* numbers; for i
  in [start, end): RANK_ID=i, DEVICE_ID=i-start. Node 1 of two 8-device nodes runs with "[8,16)" and
  gets RANK_ID 8..15 on devices 0..7. Default range: [node_rank * nproc, (node_rank + 1) * nproc).

Device ranges are written as the scripts take them, "[start,end)" or "[start,end]"; both mean
start..end-1 (the scripts strip the brackets and loop `i < END`, so MindFormers' "[0,8]" means 8 devices).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from ..errors import ConfigError
from ..typed_config import Checks, TypedConfig
from .errors import LaunchSpecError
from .record import ERROR_FILE_ENV

MODES = ("dynamic-cluster", "rank-table", "standalone")

# Variables the launcher sets per rank; `spec.env` may not override them.
OWNED_ENV = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID", "RANK_ID",
             "RANK_SIZE", "LOCAL_RANK", "DEVICE_ID", "RANK_TABLE_FILE", ERROR_FILE_ENV)

_RANGE = re.compile(r"^\s*\[?\s*(\d+)\s*,\s*(\d+)\s*[\])]?\s*$")


class LocalRank(NamedTuple):
    """One process this node starts: its index here, its global rank and its device."""
    local_rank: int
    rank: int
    device_id: int


def parse_device_range(text: str | Sequence[int]) -> tuple[int, int]:
    """"[0,4)", "[0,4]", "0,4" or (0, 4) -> (0, 4), meaning devices 0..3 (end excluded, as the scripts)."""
    if not isinstance(text, str):
        if len(text) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in text):
            raise ValueError(f"device_range {text!r} must be two integers (start, end)")
        start, end = text
    else:
        m = _RANGE.match(text)
        if not m:
            raise ValueError(f"device_range {text!r} is not of the form \"[start,end)\", e.g. \"[0,4)\"")
        start, end = int(m.group(1)), int(m.group(2))
    if start < 0 or end <= start:
        raise ValueError(f"device_range {text!r} is empty or negative: need 0 <= start < end")
    return start, end


@dataclass(frozen=True)
class LaunchSpec(TypedConfig):
    """One gang launch on this node. Every field is checked when the spec is built."""

    program: Sequence[str | os.PathLike]
    """argv of each rank (and of the scheduler), e.g. ["python", "train.py", "--config", "x.yaml"]. No shell."""
    nproc_per_node: int
    """Processes (ranks) started on this node."""
    mode: str = "dynamic-cluster"
    """"dynamic-cluster" (MindSpore scheduler + workers, what msrun does), "rank-table" (legacy Ascend) or
    "standalone" (one process, no cluster: the single-rank case without a scheduler's start-up cost)."""
    nnodes: int = 1
    """Nodes in the job; world size = nnodes * nproc_per_node."""
    node_rank: int = 0
    """This node's index, 0..nnodes-1; node 0 also runs the dynamic-cluster scheduler."""
    master_addr: str = "127.0.0.1"
    """Scheduler host (MS_SCHED_HOST)."""
    master_port: int = 8118
    """Scheduler port (MS_SCHED_PORT); must be free on node 0."""
    rank_table: str | os.PathLike | None = None
    """HCCL rank table JSON (RANK_TABLE_FILE); required in rank-table mode, optional otherwise."""
    device_range: str | tuple[int, int] | None = None
    """"[start,end)" as the MindFormers scripts take it; see the module docstring for the numbering."""
    log_dir: str | os.PathLike = "output/log"
    """Logs: LOG_DIR[/attempt_K]/rank_N/mindformer.log and LOG_DIR[/attempt_K]/scheduler.log."""
    heartbeat_dir: str | os.PathLike | None = None
    """Folder holding rank_N/heartbeat.json written by the Trainer; None disables hang detection."""
    progress_pattern: str | None = None
    """For a program that writes no heartbeat (a MindFormers job): a regular expression matched against each
    rank's log lines; every new matching line is progress, and its `step` group (if any) is the rank's step.
    Enables hang detection like heartbeat_dir; give one of the two."""
    hang_timeout: float | None = None
    """Seconds without heartbeat progress that count as a hang; None: max(hang_floor, hang_factor x median
    interval between heartbeat updates)."""
    hang_floor: float = 60.0
    """Lower bound of the derived hang timeout, seconds."""
    hang_factor: float = 10.0
    """Multiplier of the median observed heartbeat interval for the derived hang timeout."""
    startup_timeout: float = 600.0
    """Seconds a rank may take to write its first heartbeat (only with heartbeat_dir)."""
    timeout: float | None = None
    """Overall limit in seconds; the gang is stopped when it is reached. None: no limit."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for every rank (may not set the launcher's own variables, see OWNED_ENV)."""
    attempt: int = 0
    """Retry number; > 0 puts logs under LOG_DIR/attempt_K/ so retries never overwrite."""
    layout: tuple[int, int, int] | None = None
    """(data_parallel, model_parallel, pipeline_stage): checked against the world size when given."""
    stop_grace: float = 2.0
    """Seconds between SIGTERM and SIGKILL when stopping the gang."""
    stack_dump_wait: float = 1.0
    """Seconds given to ranks to write their stacks (SIGUSR1, faulthandler) before a hung gang is stopped."""
    scheduler_grace: float = 10.0
    """Seconds the scheduler may take to exit on its own once every worker succeeded (MindSpore's takes ~5)."""
    cwd: str | os.PathLike | None = None
    """Working directory of the ranks; None: the launcher's."""

    HAND_CHECKED: ClassVar[tuple[str, ...]] = ("program", "env", "layout", "device_range")
    ERROR: ClassVar[type[ConfigError]] = LaunchSpecError

    def _check(self, c: Checks) -> None:
        self._check_program(c)
        for name, low in {"nproc_per_node": 1, "nnodes": 1, "node_rank": 0, "attempt": 0}.items():
            c.require(name, lambda v: v >= low, f"must be an integer >= {low}")
        c.require("master_port", lambda v: 1 <= v <= 65535, "must be an integer in 1..65535")
        if c.ok("node_rank", "nnodes") and self.node_rank >= self.nnodes:
            c.problem(f"node_rank={self.node_rank} must be < nnodes={self.nnodes} (nodes are numbered from 0)")
        c.require("mode", lambda v: v in MODES, f"must be one of {', '.join(MODES)}")
        c.require("master_addr", lambda v: bool(v.strip()), "must be a host name or IP address")
        for name in ("log_dir", "heartbeat_dir", "rank_table", "cwd"):
            if c.ok(name) and getattr(self, name) is not None:
                c.set(name, os.fspath(getattr(self, name)))
        if (self.mode == "standalone" and c.ok("nproc_per_node", "nnodes")
                and self.nproc_per_node * self.nnodes != 1):
            c.problem("mode='standalone' runs exactly one process (no cluster); use dynamic-cluster for "
                      f"{self.nproc_per_node * self.nnodes} ranks")
        if self.mode == "rank-table" and self.rank_table is None:
            c.problem("mode='rank-table' needs rank_table (the HCCL rank table JSON, --rank-table FILE)")
        for name in ("hang_timeout", "timeout"):
            c.require(name, lambda v: v is None or v > 0, "must be a number of seconds > 0 or None")
        for name in ("hang_floor", "hang_factor", "startup_timeout"):
            c.require(name, lambda v: v > 0, "must be a number of seconds > 0")
        for name in ("stop_grace", "stack_dump_wait", "scheduler_grace"):
            c.require(name, lambda v: v >= 0, "must be a number of seconds >= 0")
        if self.hang_timeout is not None and not self.watches_progress:
            c.problem("hang_timeout is set but heartbeat_dir is not: hang detection reads "
                      "HEARTBEAT_DIR/rank_N/heartbeat.json (set heartbeat_dir, usually OUTPUT/log, or "
                      "progress_pattern for a program that writes no heartbeat)")
        self._check_progress_pattern(c)
        self._check_env(c)
        self._check_layout(c)
        self._check_device_range(c)

    def _check_progress_pattern(self, c: Checks) -> None:
        if not c.ok("progress_pattern") or self.progress_pattern is None:
            return
        if self.heartbeat_dir is not None:
            c.problem("progress_pattern and heartbeat_dir are both set: progress comes from one of them; give one")
        try:
            re.compile(self.progress_pattern)
        except re.error as exc:
            c.problem(f"progress_pattern={self.progress_pattern!r}: not a regular expression ({exc})")

    @property
    def watches_progress(self) -> bool:
        """Whether the launcher follows each rank's progress (heartbeat files or log lines) to find hangs."""
        return self.heartbeat_dir is not None or self.progress_pattern is not None

    def _check_program(self, c: Checks) -> None:
        """An argv list of strings, never a shell string."""
        if isinstance(self.program, (str, bytes)):
            c.problem(f"program={self.program!r} is a string; pass an argv list such as "
                      "['python', 'train.py', '--config', 'run.yaml'] (no shell is used)")
        elif (not isinstance(self.program, Sequence) or not self.program
              or not all(isinstance(a, (str, os.PathLike)) for a in self.program)):
            c.problem(f"program={self.program!r} must be a non-empty list of strings (argv)")
        else:
            c.set("program", tuple(os.fspath(a) for a in self.program))

    def _check_env(self, c: Checks) -> None:
        if not isinstance(self.env, Mapping):
            c.problem(f"env={self.env!r} must be a mapping of names to strings")
            return
        env = {}
        for k, v in self.env.items():
            if not isinstance(k, str) or not k or "=" in k:
                c.problem(f"env key {k!r} is not a valid variable name")
            elif k in OWNED_ENV:
                c.problem(f"env sets {k}, which the launcher sets per rank; remove it from env")
            elif isinstance(v, (str, int, float)) and not isinstance(v, bool):
                env[k] = str(v)
            else:
                c.problem(f"env[{k!r}]={v!r} must be a string")
        c.set("env", env)

    def _check_layout(self, c: Checks) -> None:
        if self.layout is None:
            return
        lay = tuple(self.layout) if isinstance(self.layout, (list, tuple)) else None
        if lay is None or len(lay) != 3 or not all(_is_int(v) and v >= 1 for v in lay):
            c.problem(f"layout={self.layout!r} must be (data_parallel, model_parallel, pipeline_stage), "
                      "three integers >= 1")
            return
        c.set("layout", lay)
        if c.ok("nproc_per_node", "nnodes"):
            ws, (dp, mp, pp) = self.nproc_per_node * self.nnodes, lay
            if ws != dp * mp * pp:
                c.problem(f"world size {ws} (nnodes {self.nnodes} x nproc_per_node {self.nproc_per_node}) != "
                          f"data_parallel {dp} x model_parallel {mp} x pipeline_stage {pp} = {dp * mp * pp}; "
                          "change the parallel config or the number of processes")

    def _check_device_range(self, c: Checks) -> None:
        if self.device_range is None:
            return
        try:
            start, end = parse_device_range(self.device_range)
        except (ValueError, TypeError) as exc:
            c.problem(str(exc))
            return
        c.set("device_range", f"[{start},{end})")
        if c.ok("nproc_per_node") and end - start != self.nproc_per_node:
            c.problem(f"device_range [{start},{end}) holds {end - start} devices but "
                      f"nproc_per_node={self.nproc_per_node}; make them agree")
        if (self.mode == "rank-table" and c.ok("nnodes", "nproc_per_node") and self.nnodes > 1
                and end > self.nnodes * self.nproc_per_node):
            c.problem(f"device_range [{start},{end}) is in global rank numbers for a multi-node "
                      f"rank-table launch and must end <= world size {self.nnodes * self.nproc_per_node}")

    # -- derived values ------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def runs_scheduler(self) -> bool:
        """Node 0 of a dynamic-cluster launch also starts the scheduler (MS_ROLE=MS_SCHED)."""
        return self.mode == "dynamic-cluster" and self.node_rank == 0

    @property
    def attempt_dir(self) -> str:
        """LOG_DIR for attempt 0, LOG_DIR/attempt_K after."""
        return self.log_dir if self.attempt == 0 else os.path.join(self.log_dir, f"attempt_{self.attempt}")

    def rank_log(self, rank: int) -> str:
        return os.path.join(self.attempt_dir, f"rank_{rank}", "mindformer.log")

    def scheduler_log(self) -> str:
        return os.path.join(self.attempt_dir, "scheduler.log")

    def error_file(self, rank: int | None) -> str:
        """The error record a rank writes (record.py, MFTASKS_ERROR_FILE), beside its log; rank None: the
        scheduler's."""
        if rank is None:
            return os.path.join(self.attempt_dir, "scheduler_error.json")
        return os.path.join(self.attempt_dir, f"rank_{rank}", "error.json")

    def heartbeat_path(self, rank: int) -> str | None:
        if self.heartbeat_dir is None:
            return None
        return os.path.join(self.heartbeat_dir, f"rank_{rank}", "heartbeat.json")

    def local_ranks(self) -> list[LocalRank]:
        """The processes of this node with their global rank and device (see the module docstring)."""
        n = self.nproc_per_node
        if self.mode == "rank-table":
            if self.nnodes == 1:
                start, end = parse_device_range(self.device_range) if self.device_range else (0, n)
                return [LocalRank(i - start, i - start, i) for i in range(start, end)]
            start, end = parse_device_range(self.device_range) if self.device_range else \
                (self.node_rank * n, (self.node_rank + 1) * n)
            return [LocalRank(i - start, i, i - start) for i in range(start, end)]
        start = parse_device_range(self.device_range)[0] if self.device_range else 0
        return [LocalRank(i, self.node_rank * n + i, start + i) for i in range(n)]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
