"""`nightly-eval`: evaluate the newest published model on fixed eval sets; fail on a regression.

Compares perplexity with the previous night's run and with the baseline (the first nightly run, kept
in WORK_DIR/nightly/baseline.json until replaced); fails with a summary when either regresses by more
than `max_regression` (relative).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from mftasks import regression, report
from mftasks.stage import StageSpec

from flows import tasks
from flows.pipeline import RelPath


@flow(name="nightly-eval", log_prints=True)
def nightly_eval(work_dir: RelPath = "demo/pipeline",
                 max_regression: Annotated[float, Field(ge=0, le=10)] = 0.05) -> dict:
    log = get_run_logger()
    root = Path(work_dir)
    model = regression.model_to_evaluate(root)
    model_type = model.manifest["model_config"]["name"]
    current = {}
    for folder in regression.eval_datasets(root, model.manifest["model_config"]["seq_length"]):
        r = tasks.launch_stage(StageSpec(name=f"nightly_{folder.name}", run_mode="eval",
                                         output_dir=str(root / "nightly" / "eval"), eval_dataset=str(folder),
                                         load_checkpoint=str(model.path), model_type=model_type), str(root / "nightly"))
        current[f"{folder.name}_PPL"] = r["result"]["PPL"]
    history = root / "nightly" / "history.jsonl"
    previous = regression.previous_night(history)
    baseline_file = root / "nightly" / "baseline.json"
    baseline = regression.read_baseline(baseline_file)
    problems = regression.compare(current, previous, baseline, max_regression)
    tasks.publish_nightly(model.path, report.metrics_with_deltas(current, previous), problems)
    regression.record_night(history, baseline_file, baseline,
                            {"time": time.time(), "model": str(model.path), "metrics": current})
    regression.raise_for(problems)
    log.info("nightly eval ok: %s", ", ".join(f"{k} {v:.3f}" for k, v in current.items()))
    return {"model": str(model.path), "metrics": current, "previous": previous, "baseline": baseline}
