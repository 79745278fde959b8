"""Prefect flows: the stages on their own, and the `finetune-gpt2` chain behind the deployment.

    prepare → train → merge → finetune (LoRA) → merge-lora → evaluate → predict

Parameters are typed; Prefect turns the annotations into the deployment's schema, so bad values are
rejected when a run is created, with a message naming the parameter.  Paths are relative to the
project (the worker's working directory): no absolute paths, no '..', no shell metacharacters.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from mftasks import history, report, scoring
from mftasks.context import DEVICE_TARGETS
from mftasks.errors import ConfigError
from mftasks.lineage import Lineage
from mftasks.model import PRESETS
from mftasks.stage import StageSpec, device_problems

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
DeviceTarget = Annotated[Literal[DEVICE_TARGETS], Field(description="MindSpore's device; one the worker's machine "
                                                                    "lacks fails the run before anything starts")]


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
                  master_port: Annotated[int, Field(ge=1024, le=65535)] = 8118,
                  device_target: DeviceTarget = "CPU") -> dict:
    """The whole chain on the embedded demo corpus (or a corpus folder of the same layout).

    save_every: checkpoint interval of the training stages (default: a third of the steps);
    hang_timeout_s: seconds without training progress that count as a hang (default: derived);
    dropout: override the preset's dropout (0 makes runs bit-comparable, e.g. for resume checks)."""
    ConfigError.raise_if(device_problems(device_target), where="finetune-gpt2")  # before anything starts
    log = get_run_logger()
    started = time.time()
    run_dir = Path(work_dir) / "runs" / (flow_run.get_id() or "local")
    corpus, pre, fin = _datasets(corpus_dir, work_dir, model_type, vocab_size, seed)

    common = dict(model_type=model_type, nproc=nproc, batch_size=batch_size, seed=seed, timeout=stage_timeout_s,
                  master_port=master_port, dropout=dropout, device_target=device_target)
    train_out = str(run_dir / "train")
    train = tasks.launch_stage(StageSpec(name="train", run_mode="train", output_dir=train_out,
                                         train_dataset=pre["output"], max_steps=train_steps,
                                         save_steps=save_every or max(train_steps // 3, 1), learning_rate=learning_rate,
                                         hang_timeout=hang_timeout_s, **common), str(run_dir))
    base = tasks.merge_checkpoints(train_out, str(run_dir / "published" / "base.ckpt"))

    lora_out = str(run_dir / "lora")
    lora = tasks.launch_stage(StageSpec(name="lora", run_mode="finetune", pet_method="lora", output_dir=lora_out,
                                        train_dataset=fin["output"], load_checkpoint=base, max_steps=finetune_steps,
                                        save_steps=save_every or max(finetune_steps // 3, 1),
                                        learning_rate=lora_learning_rate, hang_timeout=hang_timeout_s, **common),
                              str(run_dir))
    merged = tasks.merge_lora(base, lora["result"]["checkpoint"], str(run_dir / "published" / "merged.ckpt"))

    evals = {}
    for label, ckpt, data in (("pretrain_base", base, pre), ("finetune_base", base, fin),
                              ("finetune_merged", merged, fin)):
        r = tasks.launch_stage(StageSpec(name=f"eval_{label}", run_mode="eval", output_dir=str(run_dir / "eval"),
                                         eval_dataset=data["output"], load_checkpoint=ckpt, **common), str(run_dir))
        evals[label] = r["result"]
    checks = scoring.read_checks(corpus["checks"], predict_count)
    predictions = []
    if checks:
        p = tasks.launch_stage(StageSpec(name="predict", run_mode="predict", output_dir=str(run_dir / "predict"),
                                         load_checkpoint=merged, predict_data=[q["prompt"] for q in checks],
                                         max_new_tokens=8, **{**common, "nproc": 1}), str(run_dir))
        predictions = scoring.score(checks, p["result"])

    metrics = history.run_metrics(evals, train["result"], lora["result"])
    history_file = Path(work_dir) / "history.jsonl"
    previous = history.last_run(history_file, model_type)
    lineage = Lineage(tokenizer=pre["tokenizer"], pretrain_corpus=corpus["pretrain"],
                      finetune_corpus=corpus["finetune"], pretrain_dataset_id=pre["dataset_id"],
                      finetune_dataset_id=fin["dataset_id"], train_checkpoint=train["result"]["checkpoint"],
                      base_model=base, adapter=lora["result"]["checkpoint"], merged_model=merged,
                      merged_ppl=metrics["finetune_merged_PPL"])
    tasks.publish_artifacts(report.metrics_with_deltas(metrics, previous),
                            report.loss_series({"train": train_out, "lora": lora_out}), lineage.rows(), predictions)
    history.append_run(history_file, {"flow_run": flow_run.get_id(), "model_type": model_type, "time": time.time(),
                                      **metrics})
    summary = {"run_dir": str(run_dir), "metrics": metrics, "previous": previous, "predictions": predictions,
               "merged_model": merged, "seconds": round(time.time() - started, 1),
               "stages": {"train": train["seconds"], "lora": lora["seconds"]}}
    report.write_json(run_dir / "summary.json", summary, "the run summary")
    log.info("finetune-gpt2 done in %.0fs: finetune-domain PPL %.2f -> %.2f", summary["seconds"],
             metrics["finetune_base_PPL"], metrics["finetune_merged_PPL"])
    return summary

