"""Prefect flows: the stages on their own, and the `finetune-gpt2` chain behind the deployment.

    prepare → rank table → train → merge → finetune (LoRA) → merge-lora → evaluate → predict

Parameters are typed; Prefect turns the annotations into the deployment's schema, so bad values are
rejected when a run is created, with a message naming the parameter.  Paths are relative to the
project (the worker's working directory): no absolute paths, no '..', no shell metacharacters.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from mftasks import report
from mftasks.files import atomic_write_bytes, atomic_write_json, disk_full_as_error
from mftasks.model import PRESETS
from mftasks.stage import StageSpec

from flows import tasks

# The library's presets, smallest first (the order a run form lists them in).
ModelType = Literal[tuple(sorted(PRESETS, key=lambda name: PRESETS[name]["n_layer"] * PRESETS[name]["n_embd"]))]
# Each path segment starts with a letter, digit, _ or -: no leading '/', no '..', no shell metacharacters.
RelPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*$",
                               min_length=1, max_length=200,
                               description="a path inside the project: segments of letters, digits, _ . -; no '..'")]
Steps = Annotated[int, Field(ge=1, le=1_000_000)]
Procs = Annotated[int, Field(ge=1, le=64)]
LearningRate = Annotated[float, Field(gt=0, le=1)]


def _seq(model_type: str) -> int:
    return PRESETS[model_type]["seq_length"]


def _datasets(corpus_dir: str, work_dir: str, model_type: str, vocab_size: int, seed: int) -> tuple[dict, dict, dict]:
    corpus = tasks.ensure_demo_corpus(corpus_dir)
    seq = _seq(model_type)
    base = Path(work_dir) / "data"
    # These folders are the pipeline's own outputs: force lets a run with another seed or corpus replace
    # the pipeline's previous dataset there (a folder holding anything else is still refused).
    pre = tasks.prepared({"inputs": [corpus["pretrain"]], "patterns": ["*.jsonl"], "seed": seed,
                          "output": str(base / f"pretrain-s{seq}-v{vocab_size}"), "vocab_size": vocab_size,
                          "seq_length": seq, "workers": 2, "force": True})
    fin = tasks.prepared({"inputs": [corpus["finetune"]], "patterns": ["*.jsonl"], "seed": seed,
                          "output": str(base / f"finetune-s{seq}-v{vocab_size}"), "tokenizer": pre["tokenizer"],
                          "seq_length": seq, "workers": 2, "force": True})
    return corpus, pre, fin


@flow(name="prepare-data", log_prints=True)
def prepare_data(corpus_dir: RelPath = "demo/corpus", work_dir: RelPath = "demo/pipeline",
                 model_type: ModelType = "gpt2_small_cpu", vocab_size: Annotated[int, Field(ge=64, le=200_000)] = 4000,
                 seed: int = 1234) -> dict:
    """Build the demo corpus if needed and prepare the pretraining and finetune datasets (cached)."""
    _, pre, fin = _datasets(corpus_dir, work_dir, model_type, vocab_size, seed)
    return {"pretrain": pre, "finetune": fin}


@flow(name="finetune-gpt2", log_prints=True, persist_result=True)
def finetune_gpt2(corpus_dir: RelPath = "demo/corpus", work_dir: RelPath = "demo/pipeline",
                  model_type: ModelType = "gpt2_small_cpu", nproc: Procs = 1,
                  vocab_size: Annotated[int, Field(ge=64, le=200_000)] = 4000,
                  train_steps: Steps = 60, finetune_steps: Steps = 60,
                  batch_size: Annotated[int, Field(ge=1, le=4096)] = 8,
                  learning_rate: LearningRate = 1e-3, lora_learning_rate: LearningRate = 3e-3,
                  seed: Annotated[int, Field(ge=0)] = 1234, predict_count: Annotated[int, Field(ge=0, le=64)] = 4,
                  stage_timeout_s: Annotated[float, Field(gt=0)] = 7200.0,
                  hang_timeout_s: Annotated[float, Field(gt=0)] | None = None,
                  save_every: Annotated[int, Field(ge=1)] | None = None,
                  dropout: Annotated[float, Field(ge=0, lt=1)] | None = None,
                  master_port: Annotated[int, Field(ge=1024, le=65535)] = 8118) -> dict:
    """The whole chain on the embedded demo corpus (or a corpus folder of the same layout).

    save_every: checkpoint interval of the training stages (default: a third of the steps);
    hang_timeout_s: seconds without training progress that count as a hang (default: derived);
    dropout: override the preset's dropout (0 makes runs bit-comparable, e.g. for resume checks)."""
    log = get_run_logger()
    started = time.time()
    run_dir = Path(work_dir) / "runs" / (flow_run.get_id() or "local")
    corpus, pre, fin = _datasets(corpus_dir, work_dir, model_type, vocab_size, seed)
    if nproc > 1:
        tasks.generate_rank_table(nproc, str(run_dir / "rank_table.json"))

    common = dict(model_type=model_type, nproc=nproc, batch_size=batch_size, seed=seed, timeout=stage_timeout_s,
                  master_port=master_port, dropout=dropout)
    train_out = str(run_dir / "train")
    train = tasks.launch_ranks(StageSpec(name="train", run_mode="train", output_dir=train_out,
                                         train_dataset=pre["output"], max_steps=train_steps,
                                         save_steps=save_every or max(train_steps // 3, 1), learning_rate=learning_rate,
                                         hang_timeout=hang_timeout_s, **common), str(run_dir))
    base = tasks.merge_checkpoints(train_out, str(run_dir / "published" / "base.ckpt"))

    lora_out = str(run_dir / "lora")
    lora = tasks.launch_ranks(StageSpec(name="lora", run_mode="finetune", pet_method="lora", output_dir=lora_out,
                                        train_dataset=fin["output"], load_checkpoint=base, max_steps=finetune_steps,
                                        save_steps=save_every or max(finetune_steps // 3, 1),
                                        learning_rate=lora_learning_rate, hang_timeout=hang_timeout_s, **common),
                              str(run_dir))
    merged = tasks.merge_lora(base, lora["result"]["checkpoint"], str(run_dir / "published" / "merged.ckpt"))

    evals = {}
    for label, ckpt, data in (("pretrain_base", base, pre), ("finetune_base", base, fin),
                              ("finetune_merged", merged, fin)):
        r = tasks.launch_ranks(StageSpec(name=f"eval_{label}", run_mode="eval", output_dir=str(run_dir / "eval"),
                                         eval_dataset=data["output"], load_checkpoint=ckpt, **common), str(run_dir))
        evals[label] = r["result"]
    prompts = _check_prompts(corpus["checks"], predict_count)
    predictions = []
    if prompts:
        p = tasks.launch_ranks(StageSpec(name="predict", run_mode="predict", output_dir=str(run_dir / "predict"),
                                         load_checkpoint=merged, predict_data=[q["prompt"] for q in prompts],
                                         max_new_tokens=8, **{**common, "nproc": 1}), str(run_dir))
        for q, out in zip(prompts, p["result"]):
            text = out["text_generation_text"][0]
            predictions.append({"prompt": q["prompt"], "expected": q["answer"], "output": text,
                                "correct": text[len(q["prompt"]):].strip().startswith(q["answer"])})

    metrics = {"pretrain_base_PPL": evals["pretrain_base"]["PPL"], "finetune_base_PPL": evals["finetune_base"]["PPL"],
               "finetune_merged_PPL": evals["finetune_merged"]["PPL"],
               "finetune_merged_loss": evals["finetune_merged"]["loss"],
               "train_final_loss": train["result"]["final_loss"], "lora_final_loss": lora["result"]["final_loss"]}
    history = Path(work_dir) / "history.jsonl"
    previous = _last_history(history, model_type)
    rows = report.metrics_with_deltas(metrics, previous)
    loss = {stage: [(r["step"], r["loss"]) for r in report.read_metrics(Path(out) / "log" / "rank_0" / "metrics.jsonl",
                                                                        stage)]
            for stage, out in (("train", train_out), ("lora", lora_out))}
    lineage = [
        {"artifact": "tokenizer", "id": pre["tokenizer"], "from": "pretraining corpus"},
        {"artifact": "dataset (pretrain)", "id": pre["dataset_id"][:16], "from": corpus["pretrain"]},
        {"artifact": "dataset (finetune)", "id": fin["dataset_id"][:16], "from": corpus["finetune"]},
        {"artifact": "checkpoint (train)", "id": train["result"]["checkpoint"], "from": "dataset (pretrain)"},
        {"artifact": "base model", "id": base, "from": "checkpoint (train), merged replicas"},
        {"artifact": "adapter (LoRA)", "id": lora["result"]["checkpoint"], "from": "base model + dataset (finetune)"},
        {"artifact": "merged model", "id": merged, "from": "base model + adapter"},
        {"artifact": "eval", "id": f"PPL {metrics['finetune_merged_PPL']:.2f}", "from": "merged model"},
    ]
    tasks.publish_artifacts(rows, loss, lineage, predictions)
    _append_history(history, {"flow_run": flow_run.get_id(), "model_type": model_type, "time": time.time(),
                              **metrics})
    summary = {"run_dir": str(run_dir), "metrics": metrics, "previous": previous, "predictions": predictions,
               "merged_model": merged, "seconds": round(time.time() - started, 1),
               "stages": {"train": train["seconds"], "lora": lora["seconds"]}}
    write_json(run_dir / "summary.json", summary, "the run summary")
    log.info("finetune-gpt2 done in %.0fs: finetune-domain PPL %.2f -> %.2f", summary["seconds"],
             metrics["finetune_base_PPL"], metrics["finetune_merged_PPL"])
    return summary


def _check_prompts(path: str, count: int) -> list[dict]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(l) for l in lines[:count]]


def _last_history(path: Path, model_type: str) -> dict | None:
    try:
        rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    rows = [r for r in rows if r.get("model_type") == model_type]
    return rows[-1] if rows else None


def _append_history(path: Path, row: dict) -> None:
    append_jsonl(path, row, "the metrics history")


def write_json(path: Path, obj, what: str) -> None:
    """A report file, written atomically; a full disk ends in a DiskFullError naming the path."""
    with disk_full_as_error(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, obj)


def append_jsonl(path: Path, row: dict, what: str) -> None:
    """One more line in a small JSONL history, written atomically (a full disk leaves the old file whole,
    never a cut line), with a DiskFullError naming the path."""
    with disk_full_as_error(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_bytes() if path.is_file() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(path, old + (json.dumps(row) + "\n").encode())
