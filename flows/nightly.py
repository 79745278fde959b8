"""`nightly-eval`: evaluate the newest published model on fixed eval sets; fail on a regression.

Compares perplexity with the previous night's run and with the baseline (the first nightly run, kept
in WORK_DIR/nightly/baseline.json until replaced); fails with a summary when either regresses by more
than `max_regression` (relative).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from mftasks import checkpoint as ckpt
from mftasks import report
from mftasks.errors import RegressionError
from mftasks.stage import StageSpec

from flows import tasks
from flows.pipeline import RelPath, append_jsonl, write_json


def newest_published(work_dir: Path) -> ckpt.CheckpointInfo | None:
    infos = []
    for path in work_dir.glob("runs/*/published/merged.ckpt"):
        if not ckpt.verify(path):
            infos.append(ckpt.CheckpointInfo(path, ckpt.read_manifest(path)))
    return max(infos, key=lambda i: i.manifest["created"]) if infos else None


def compare(current: dict, previous: dict | None, baseline: dict | None, max_regression: float) -> list[str]:
    """Regression messages (empty: fine); a metric regresses when it grows by more than max_regression."""
    problems = []
    for label, ref in (("previous night", previous), ("baseline", baseline)):
        for name, value in current.items():
            old = (ref or {}).get(name)
            if old and value > old * (1 + max_regression):
                problems.append(f"{name} {value:.3f} is {100 * (value / old - 1):.1f}% worse than the {label} "
                                f"({old:.3f}); allowed {100 * max_regression:.0f}%")
    return problems


@flow(name="nightly-eval", log_prints=True)
def nightly_eval(work_dir: RelPath = "demo/pipeline",
                 max_regression: Annotated[float, Field(ge=0, le=10)] = 0.05) -> dict:
    log = get_run_logger()
    root = Path(work_dir)
    model = newest_published(root)
    if model is None:
        raise FileNotFoundError(f"no verified published model under {root}/runs/*/published/; run finetune-gpt2 first")
    model_type = model.manifest["model_config"]["name"]
    current = {}
    for folder in sorted((root / "data").glob(f"*-s{model.manifest['model_config']['seq_length']}-*")):
        if not (folder / "manifest.json").is_file():
            continue
        r = tasks.launch_ranks(StageSpec(name=f"nightly_{folder.name}", run_mode="eval",
                                         output_dir=str(root / "nightly" / "eval"), eval_dataset=str(folder),
                                         load_checkpoint=str(model.path), model_type=model_type), str(root / "nightly"))
        current[f"{folder.name}_PPL"] = r["result"]["PPL"]
    history = root / "nightly" / "history.jsonl"
    previous = None
    if history.is_file():
        lines = [json.loads(l) for l in history.read_text().splitlines() if l.strip()]
        previous = lines[-1]["metrics"] if lines else None
    baseline_file = root / "nightly" / "baseline.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else None
    problems = compare(current, previous, baseline, max_regression)
    rows = report.metrics_with_deltas(current, previous)
    create_markdown_artifact(key="nightly-eval", markdown=(
        f"## Nightly eval of `{model.path}`\n\n" + report.markdown_table(rows)
        + ("\n\n**Regressions:**\n" + "\n".join(f"- {p}" for p in problems) if problems else "\n\nNo regression.")))
    append_jsonl(history, {"time": time.time(), "model": str(model.path), "metrics": current}, "the nightly history")
    if baseline is None:
        write_json(baseline_file, current, "the nightly baseline")
    if problems:
        raise RegressionError("perplexity regressed:\n" + "\n".join(f"  - {p}" for p in problems))
    log.info("nightly eval ok: %s", ", ".join(f"{k} {v:.3f}" for k, v in current.items()))
    return {"model": str(model.path), "metrics": current, "previous": previous, "baseline": baseline}
