"""Prefect tasks: each wraps one mftasks call and adds retries, caching, logs and artifacts."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError
from prefect.artifacts import (create_image_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)
from prefect.runtime import task_run

from mftasks import regression, report
from mftasks.data import PrepareSpec, demo_corpus, plan, prepare, verify
from mftasks.mfjob import JobFailed
from mftasks.stage import StageFailed, StageSpec, run_stage


def _log():
    """The run logger inside a flow or task run; a plain logger when a task's .fn() is called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flows")


# ---------------------------------------------------------------------------------------------- data
@task(name="demo-corpus", persist_result=True)
def ensure_demo_corpus(folder: str) -> dict:
    """Build the embedded demo corpus once (no download)."""
    root = Path(folder)
    if not (root / "checks" / "qa_checks.jsonl").is_file():
        c = demo_corpus.build(root)
        _log().info("built demo corpus: %d pretraining and %d finetune documents",
                              c.pretrain_documents, c.finetune_documents)
    return {"pretrain": str(root / "pretrain"), "finetune": str(root / "finetune"),
            "checks": str(root / "checks" / "qa_checks.jsonl")}


def _dataset_key(context, parameters) -> str:
    """Cache key: the dataset_id (sources + parameters + tokenizer) and where it is written, so reruns and
    retries skip the work (the same data prepared into another folder is another result)."""
    spec = PrepareSpec(**parameters["spec"])
    where = hashlib.sha256(str(Path(spec.output).resolve()).encode()).hexdigest()[:12]
    return f"dataset-{plan(spec)}-{where}"


@task(name="prepare-dataset", cache_key_fn=_dataset_key, persist_result=True)
def prepare_dataset(spec: dict) -> dict:
    """`mftasks data prepare` (idempotent; cached across flow runs by dataset_id)."""
    result = prepare(PrepareSpec(**spec))
    for w in result.warnings:
        _log().warning(w)
    _log().info("%s %s: %d train / %d eval samples (dataset_id %s)", result.status, result.output,
                          result.train_samples, result.eval_samples, result.dataset_id[:12])
    return {"output": str(result.output), "dataset_id": result.dataset_id, "train_samples": result.train_samples,
            "eval_samples": result.eval_samples, "tokenizer": str(result.output / "tokenizer.model")}


def prepared(spec: dict) -> dict:
    """prepare_dataset, re-run with a fresh cache if the cached dataset's files are gone or changed."""
    out = prepare_dataset(spec)
    folder = Path(out["output"])
    if not (folder / "manifest.json").is_file() or verify(folder):
        _log().warning("cached dataset %s is missing or changed: preparing it again", folder)
        out = prepare_dataset.with_options(refresh_cache=True)(spec)
    return out


# ---------------------------------------------------------------------------------------------- cluster
@task(name="generate-rank-table")
def generate_rank_table(nproc: int, path: str) -> dict:
    """A rank table for this host's devices [0, nproc), validated and stored as an artifact."""
    from mftasks import ranktable

    ips = [f"192.168.100.{101 + i}" for i in range(nproc)]  # CPU hosts have no /etc/hccn.conf
    table = ranktable.generate("127.0.0.1", list(range(nproc)), device_ips=ips, pod_ip="127.0.0.1")
    problems = ranktable.validate(table.to_json(), for_dynamic_cluster=True)
    if problems:
        raise ValueError("generated rank table is invalid: " + "; ".join(problems))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ranktable.write(table, path, force=True)
    rows = [{"rank": d.rank_id, "server": s.server_id, "device_id": d.device_id, "device_ip": d.device_ip}
            for s in table.servers for d in s.devices]
    create_table_artifact(table=rows, key="rank-table", description=f"HCCL rank table {path}")
    return {"path": path, "world_size": len(rows)}


# ---------------------------------------------------------------------------------------------- stages
def device_limit(node: str) -> str:
    """The global concurrency limit counting a node's devices (created by `mftasks worker start`)."""
    return f"devices-{node}"


def retry_if_retryable(task, task_run, state) -> bool:
    """Retry only infrastructure failures (killed, hang, timeout, crash) of a gang launch, a stage's or a
    MindFormers job's; never user errors."""
    try:
        state.result()
    except (StageFailed, JobFailed) as exc:
        return exc.retryable
    except Exception:  # noqa: BLE001 - anything else (bad config, data error) is not worth a retry
        return False
    return False


def _stage_run_name() -> str:
    """A launch's task run is named after its stage (train, lora, eval-finetune-merged, ...): the run graph
    and the task-run list read as the pipeline does."""
    return task_run.parameters["spec"].name.replace("_", "-")


def launch_stage(spec: StageSpec, work_dir: str) -> dict:
    """launch_ranks, its task run named after the stage and tagged `launch-ranks` and `stage:<name>`."""
    return launch_ranks.with_options(tags=["launch-ranks", f"stage:{spec.name.replace('_', '-')}"])(spec, work_dir)


@task(name="launch-ranks", task_run_name=_stage_run_name, retries=2, retry_delay_seconds=1,
      retry_condition_fn=retry_if_retryable)
def launch_ranks(spec: StageSpec, work_dir: str) -> dict:
    """A gang launch of the Trainer for one stage; rank logs forwarded with a rank prefix.

    A retry resumes from the newest verified checkpoint of the stage (run_stage decides), after the
    previous attempt's processes are proven gone.
    """
    log = _log()
    attempt = max(task_run.run_count - 1, 0)
    if attempt:
        log.warning("attempt %d of stage %s: resuming from the newest verified checkpoint", attempt + 1, spec.name)
    progress = _ProgressWatcher(spec) if spec.run_mode in ("train", "finetune") else None

    def forward(rank, line):
        if line.strip():
            log.info("[%s] %s", "sched" if rank is None else f"rank {rank}", line.rstrip())

    node = os.environ.get("MFTASKS_NODE", "local")
    try:
        # Device-denominated: one slot of this node's limit per rank, all at once or not at all.
        # lease_duration 60 s (the server's minimum): slots of a SIGKILLed flow process come back soon.
        with concurrency(device_limit(node), occupy=spec.nproc, strict=False, lease_duration=60):
            result = run_stage(spec, work_dir, attempt=attempt, on_line=forward)
    except StageFailed as exc:
        log.error("stage %s failed (%s%s): %s", spec.name, exc.result.failure_class.value,
                  ", will retry" if exc.retryable else ", not retryable", exc.result.root_cause.describe())
        _verdict_artifact(spec.name, exc, attempt)
        _rank_table_artifact(spec.name, exc.result.rank_rows())
        raise
    finally:
        if progress:
            progress.stop()
    _rank_table_artifact(spec.name, result.ranks)
    return result.to_dict()


def _verdict_artifact(stage: str, exc: StageFailed, attempt: int) -> None:
    """The launcher's verdict on a failed attempt, as data (the log line above says the same to a person);
    one version of `verdict-<stage>` per failed attempt."""
    cause = exc.result.root_cause
    row = {"stage": stage, "class": cause.failure_class.value, "retryable": exc.retryable, "who": cause.who,
           "what": f"{cause.who} {cause.message}", "elapsed_s": round(cause.elapsed, 3), "attempt": attempt,
           "message": cause.describe()}
    create_table_artifact(table=[row], key=f"verdict-{stage.replace('_', '-')}",
                          description=f"launcher verdict on attempt {attempt + 1} of stage {stage}")


def _rank_table_artifact(stage: str, rows: list[dict]) -> None:
    create_table_artifact(table=rows, key=f"ranks-{stage.replace('_', '-')}",
                          description=f"per-rank table of stage {stage}")


class _ProgressWatcher:
    """Updates a progress artifact from the Trainer's metrics.jsonl while a training stage runs."""

    def __init__(self, spec: StageSpec):
        self.path = Path(spec.output_dir) / "log" / "rank_0" / "metrics.jsonl"
        self.total = spec.max_steps
        self.stage = "lora" if spec.pet_method == "lora" else spec.run_mode
        self.done = threading.Event()
        try:
            self.artifact = create_progress_artifact(progress=0.0, key=f"progress-{spec.name.replace('_', '-')}",
                                                     description=f"{spec.name}: steps done (%)")
        except Exception:  # noqa: BLE001 - progress is nice to have, never a reason to fail
            self.artifact = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(2.0):
            self._update()
        self._update()

    def _update(self) -> None:
        rows = report.read_metrics(self.path, self.stage)
        if rows and self.artifact is not None:
            try:
                update_progress_artifact(self.artifact, progress=min(100.0, 100.0 * rows[-1]["step"] / self.total))
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------- checkpoints
@task(name="merge-checkpoints", persist_result=True)
def merge_checkpoints(output_dir: str, out_path: str) -> str:
    """Data-parallel replicas → one verified full checkpoint."""
    from mftasks.ckpt import merge_replicas

    if Path(out_path).exists():
        _log().info("%s already published", out_path)
        return out_path
    return str(merge_replicas(output_dir, out_path))


@task(name="merge-lora", persist_result=True)
def merge_lora(base: str, adapter: str, out_path: str) -> str:
    """Fold the LoRA adapter into its base: W' = W + (alpha / rank) B A."""
    from mftasks.ckpt import merge_lora as merge

    return str(merge(Path(base), Path(adapter), Path(out_path)))


# ---------------------------------------------------------------------------------------------- artifacts
def publish_artifacts(metrics_rows: list[dict], loss: dict[str, list[tuple[int, float]]], lineage: list[dict],
                      predictions: list[dict]) -> None:
    create_table_artifact(table=metrics_rows, key="eval-metrics", description="evaluation (delta vs previous run)")
    svg = report.loss_curve_svg(loss)
    create_image_artifact(image_url=report.svg_data_url(svg), key="loss-curve", description="training loss")
    table = [{"stage": name, "step": s, "loss": l} for name, pts in loss.items() for s, l in pts]
    create_table_artifact(table=table, key="loss-table", description="loss by step")
    create_markdown_artifact(markdown="## Lineage\n\n" + report.markdown_table(lineage), key="lineage",
                             description="tokenizer → dataset → checkpoint → adapter → merged model → eval")
    create_table_artifact(table=predictions, key="predictions", description="predictions of the merged model")


def publish_nightly(model: str | Path, metrics_rows: list[dict], problems: list[str]) -> None:
    create_markdown_artifact(key="nightly-eval", markdown=regression.markdown(model, metrics_rows, problems))
