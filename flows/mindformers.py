"""`mindformers-job`: a user's own MindFormers entry point (their run_mindformer.py and YAML, in
MindFormers' own environment) as one retryable, observable Prefect stage.

The flow's parameters name files (project-relative) and a run mode; the argv is built from them, each value
its own argv element after run_mindformer.py's flag for it (never shell text).  What the stage gets is what
the GPT-2 stages get: every rank's output in the flow-run log with a `[rank N]` prefix, fail-fast, hangs
found from MindFormers' own loss lines, retries only for infrastructure failures (a retry resumes from
MindFormers' meta.json: `mftasks.mfjob`), a progress artifact while it trains, and per-rank, loss and
metric tables when it ends.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import task_run
from pydantic import Field

from flows.pipeline import Procs
from flows.stages import Port
from flows.tasks import _log, _rank_table_artifact, device_limit, retry_if_retryable
from mftasks.mfjob import JobFailed, JobSpec, parse_line, run_job
from mftasks.run_config import RUN_MODES

RunMode = Literal[RUN_MODES]  # run_mindformer.py's --run_mode values, the same as mftasks run's
# Every path here becomes an argv element after one of run_mindformer.py's flags, so no segment may start
# with '-' (a value must never read as an option), '.' (no '..') or '/' (project paths only).
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
JobPath = Annotated[str, Field(pattern=rf"^{_SEGMENT}(/{_SEGMENT})*$", min_length=1, max_length=200,
                               description="a path inside the project: segments of letters, digits, _ . - that "
                                           "start with a letter, digit or _; no '..'")]
EnvPath = Annotated[str, Field(pattern=rf"^(/|\.)?{_SEGMENT}(/{_SEGMENT})*$", max_length=1024,
                               description="an interpreter: absolute, or project-relative (a hidden first folder "
                                           "such as .venv-mindformers allowed)")]
Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


@task(name="mindformers-job", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_if_retryable)
def run_mindformers_job(spec: JobSpec, name: str) -> dict:
    """One attempt of the job (a retry resumes from MindFormers' meta.json when every rank saved the same step)."""
    log = _log()
    attempt = max(task_run.run_count - 1, 0)
    key = name.replace("_", "-")
    progress = _progress_artifact(key)

    def forward(rank, line):
        if not line.strip():
            return
        log.info("[%s] %s", "sched" if rank is None else f"rank {rank}", line.rstrip())
        report = parse_line(line) if rank == 0 and progress is not None else None
        if report is not None:
            try:
                update_progress_artifact(progress, progress=100.0 * report.global_step / report.total_steps)
            except Exception:  # noqa: BLE001 - progress is nice to have, never a reason to fail
                pass

    with concurrency(device_limit(os.environ.get("MFTASKS_NODE", "local")), occupy=spec.nproc_per_node,
                     strict=False, lease_duration=60):
        result = run_job(spec, attempt=attempt, on_line=forward)
    if result.resumed_from is not None:
        log.warning("attempt %d resumed from step %d (%s)", attempt + 1, result.resumed_from.step,
                    result.resumed_from.file_name)
    elif attempt:
        log.warning("attempt %d started over: %s", attempt + 1, result.why_not_resumed)
    _rank_table_artifact(name, result.launch.rank_rows())
    rows = [r.as_row() for r in result.reports.get(0, [])]
    if rows:
        create_table_artifact(table=rows, key=f"loss-{key}", description=f"{name}: MindFormers' loss lines (rank 0)")
    if result.metrics:
        create_table_artifact(table=[{"metric": k, **v} if isinstance(v, dict) else {"metric": k, "value": v}
                                     for k, v in result.metrics.items()],
                              key=f"metrics-{key}", description=f"{name}: MindFormers' evaluation")
    if not result.ok:
        cause = result.launch.root_cause
        log.error("mindformers job %s failed (%s%s): %s", name, cause.failure_class.value,
                  ", will retry" if result.launch.retryable else ", not retryable", cause.describe())
        raise JobFailed(result)
    return {"output_dir": spec.output_dir, "last_step": result.last_step, "metrics": result.metrics,
            "resumed_from_step": result.resumed_from.step if result.resumed_from else None, "attempt": attempt}


def _progress_artifact(key: str):
    try:
        return create_progress_artifact(progress=0.0, key=f"progress-{key}", description="steps done (%)")
    except Exception:  # noqa: BLE001
        return None


@flow(name="mindformers-job", log_prints=True)
def mindformers_job(
        config: Annotated[JobPath, Field(description="the job's MindFormers YAML (run_mindformer.py --config)")],
        output_dir: Annotated[JobPath, Field(description="MindFormers' output folder (checkpoint/rank_N, log/)")],
        run_mode: Annotated[RunMode, Field(description="run_mindformer.py --run_mode")] = "train",
        entry_point: Annotated[JobPath, Field(description="the user's run_mindformer.py (or any program taking "
                                                         "its flags)")] = "run_mindformer.py",
        python: Annotated[EnvPath, Field(description="the interpreter of MindFormers' own environment")]
        = ".venv-mindformers/bin/python",
        train_dataset_dir: JobPath | None = None, eval_dataset_dir: JobPath | None = None,
        load_checkpoint: JobPath | None = None, nproc_per_node: Procs = 1, master_port: Port = 8118,
        hang_timeout: Seconds | None = None, timeout: Seconds | None = None,
        name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$",
                                   description="the stage's name in task runs and artifact keys")] = "job") -> dict:
    """Run the user's MindFormers entry point on nproc_per_node ranks (data parallel when > 1).  Paths are
    resolved here, in the project (the ranks run in output_dir, where MindFormers writes its ./output/log)."""
    def here(path: str) -> str:
        return str(Path(path).absolute())

    program = [here(python), here(entry_point), "--config", here(config), "--run_mode", run_mode]
    for flag, value in (("--train_dataset_dir", train_dataset_dir), ("--eval_dataset_dir", eval_dataset_dir),
                        ("--load_checkpoint", load_checkpoint)):
        if value is not None:
            program += [flag, here(value)]
    if nproc_per_node > 1:
        program += ["--use_parallel", "True"]
    spec = JobSpec(program=program, output_dir=here(output_dir), nproc_per_node=nproc_per_node, master_port=master_port,
                   watch_progress=run_mode in ("train", "finetune"), hang_timeout=hang_timeout, timeout=timeout,
                   env={"GLOG_v": os.environ.get("GLOG_v", "3")})
    return run_mindformers_job.with_options(task_run_name=f"mindformers-{name}")(spec, name)
