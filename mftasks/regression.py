"""The nightly regression check: evaluate the newest published model, compare with the previous night
and the baseline.

Files under WORK_DIR/nightly: `history.jsonl` (one line per night: time, model, metrics) and
`baseline.json` (the first night's metrics, kept until replaced).  A metric regresses when it grows by
more than `max_regression` (relative) over either reference.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import checkpoint as ckpt
from .errors import RegressionError
from .report import append_jsonl, markdown_table, write_json


def newest_published(work_dir: Path) -> ckpt.CheckpointInfo | None:
    """The most recently created verified `runs/*/published/merged.ckpt` under work_dir, if any."""
    infos = []
    for path in work_dir.glob("runs/*/published/merged.ckpt"):
        if not ckpt.verify(path):
            infos.append(ckpt.CheckpointInfo(path, ckpt.read_manifest(path)))
    return max(infos, key=lambda i: i.manifest["created"]) if infos else None


def model_to_evaluate(work_dir: Path) -> ckpt.CheckpointInfo:
    """newest_published, or FileNotFoundError saying to run finetune-gpt2 first."""
    model = newest_published(work_dir)
    if model is None:
        raise FileNotFoundError(f"no verified published model under {work_dir}/runs/*/published/; "
                                "run finetune-gpt2 first")
    return model


def eval_datasets(work_dir: Path, seq_length: int) -> list[Path]:
    """The prepared datasets under work_dir/data made for this sequence length, by name."""
    return [folder for folder in sorted((work_dir / "data").glob(f"*-s{seq_length}-*"))
            if (folder / "manifest.json").is_file()]


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


def previous_night(history: Path) -> dict | None:
    """The metrics of the newest night in the history; None when there is no history yet."""
    if not history.is_file():
        return None
    lines = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    return lines[-1]["metrics"] if lines else None


def read_baseline(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def markdown(model: str | Path, rows: list[dict], problems: list[str]) -> str:
    """The night's report: the metrics table (with deltas) and the regressions, if any."""
    return (f"## Nightly eval of `{model}`\n\n" + markdown_table(rows)
            + ("\n\n**Regressions:**\n" + "\n".join(f"- {p}" for p in problems) if problems else "\n\nNo regression."))


def record_night(history: Path, baseline_file: Path, baseline: dict | None, row: dict) -> None:
    """Append the night's row to the history; its metrics become the baseline when there was none."""
    append_jsonl(history, row, "the nightly history")
    if baseline is None:
        write_json(baseline_file, row["metrics"], "the nightly baseline")


def raise_for(problems: list[str]) -> None:
    """RegressionError listing every regression; nothing when there is none."""
    if problems:
        raise RegressionError("perplexity regressed:\n" + "\n".join(f"  - {p}" for p in problems))
