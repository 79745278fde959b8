"""The finetune pipeline's metrics history: one JSON line per finished run, in WORK_DIR/history.jsonl.

A run's eval-metrics table shows each metric's change since the previous run of the same model type.
"""
from __future__ import annotations

import json
from pathlib import Path

from .report import append_jsonl


def run_metrics(evals: dict[str, dict], train: dict, lora: dict) -> dict[str, float]:
    """The metrics a run records: perplexities of the three evals (pretrain_base, finetune_base,
    finetune_merged), the merged model's eval loss, and the final training losses of train and lora."""
    return {"pretrain_base_PPL": evals["pretrain_base"]["PPL"], "finetune_base_PPL": evals["finetune_base"]["PPL"],
            "finetune_merged_PPL": evals["finetune_merged"]["PPL"],
            "finetune_merged_loss": evals["finetune_merged"]["loss"],
            "train_final_loss": train["final_loss"], "lora_final_loss": lora["final_loss"]}


def last_run(path: str | Path, model_type: str) -> dict | None:
    """The newest history row of `model_type`; None when there is none or the history cannot be read."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    rows = [r for r in rows if r.get("model_type") == model_type]
    return rows[-1] if rows else None


def append_run(path: str | Path, row: dict) -> None:
    """Add a run's row (written atomically; a full disk is a DiskFullError naming the history)."""
    append_jsonl(Path(path), row, "the metrics history")
