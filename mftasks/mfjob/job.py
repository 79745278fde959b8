"""Run a MindFormers job through the gang launcher: `run_job(spec, attempt) -> JobResult`.

Each attempt is one gang launch of the user's program (fail-fast, per-rank logs, failure classes from
`mftasks.launcher`).  A retry (attempt > 0) resumes from MindFormers' own meta.json when every rank saved
the same step (`resume.py`); what each rank reported is read back from MindFormers' loss lines and metric
lines (`progress.py`).
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MftasksError
from ..launcher import LaunchResult, LaunchSpec, launch
from .progress import LOSS_LINE, StepReport, read_reports
from .resume import ResumePoint, resume_point
from .spec import JobSpec

METRIC_LINE = re.compile(r"\b(?P<name>\w+Metric) = (?P<value>\{.*\})\s*$")
"""MindFormers' evaluate result line: `PerplexityMetric = {'PerplexityMetric': {'loss': ..., 'PPL': ...}}`."""


@dataclass
class JobResult:
    """One attempt of a MindFormers job."""

    launch: LaunchResult
    resumed_from: ResumePoint | None
    why_not_resumed: str
    """Why this attempt started from the beginning ('' when it resumed)."""
    reports: dict[int, list[StepReport]] = field(default_factory=dict)
    """Each rank's loss lines, in order."""
    metrics: dict = field(default_factory=dict)
    """Rank 0's evaluation results by metric name ({'PerplexityMetric': {'loss', 'PPL'}})."""

    @property
    def ok(self) -> bool:
        return self.launch.ok

    @property
    def last_step(self) -> int | None:
        """The last global step rank 0 reported in this attempt."""
        rows = self.reports.get(0) or []
        return rows[-1].global_step if rows else None


class JobFailed(MftasksError):
    """An attempt of a MindFormers job failed; carries its JobResult (root cause, class, retryable)."""

    def __init__(self, result: JobResult):
        self.result = result
        self.retryable = bool(result.launch.retryable)
        super().__init__(f"MindFormers job failed: {result.launch.summary()}")


def argv_for(spec: JobSpec, point: ResumePoint | None) -> list[str]:
    """The program's argv for an attempt: + --output_dir, and the resume flags when resuming."""
    argv = [*spec.program, "--output_dir", spec.output_dir]
    if point is None:
        return argv
    return [*_without_flag(argv, "--load_checkpoint"), "--resume_training", point.file_name,
            "--load_checkpoint", str(point.checkpoint_dir)]


def _without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` and `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def launch_spec(spec: JobSpec, attempt: int, point: ResumePoint | None) -> LaunchSpec:
    return LaunchSpec(program=argv_for(spec, point), nproc_per_node=spec.nproc_per_node, nnodes=spec.nnodes,
                      node_rank=spec.node_rank, master_addr=spec.master_addr, master_port=spec.master_port,
                      mode="dynamic-cluster" if spec.world_size > 1 else "standalone",
                      log_dir=spec.launch_log_dir, cwd=spec.cwd or spec.output_dir, env=dict(spec.env),
                      attempt=attempt, timeout=spec.timeout,
                      progress_pattern=LOSS_LINE.pattern if spec.watch_progress else None,
                      hang_timeout=spec.hang_timeout, startup_timeout=spec.startup_timeout)


def run_job(spec: JobSpec, attempt: int = 0, on_line=None) -> JobResult:
    """Run attempt `attempt` of the job (a retry resumes when it can) and read back what the ranks reported."""
    if attempt > 0 and spec.resume:
        point, why = resume_point(spec.output_dir, spec.world_size)
    else:
        point, why = None, "first attempt" if attempt == 0 else "resume is off"
    os.makedirs(spec.output_dir, exist_ok=True)
    result = launch(launch_spec(spec, attempt, point), on_line=on_line)
    reports = {rank: read_reports(outcome.log_path) for rank, outcome in result.ranks.items()}
    metrics = read_metrics(result.ranks[0].log_path) if 0 in result.ranks else {}
    return JobResult(result, point, "" if point else why, reports, metrics)


def read_metrics(log_path: str | Path) -> dict:
    """Every MindFormers metric line of a rank's log, by metric name (the last one wins)."""
    out = {}
    try:
        lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = METRIC_LINE.search(line)
        if m:
            try:
                value = ast.literal_eval(m["value"])
            except (ValueError, SyntaxError):
                continue
            out.update(value if isinstance(value, dict) else {m["name"]: value})
    return out
