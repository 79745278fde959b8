"""Prompt checks: a few question/answer pairs scored against the model's predictions.

A check file is JSONL, one `{"prompt": ..., "answer": ...}` a line (the demo corpus writes
`checks/qa_checks.jsonl`).  A prediction is correct when the text generated after the prompt starts
with the expected answer (leading and trailing whitespace ignored).
"""
from __future__ import annotations

import json
from pathlib import Path


def read_checks(path: str | Path, count: int) -> list[dict]:
    """The first `count` checks of a check file; none when the file cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines[:count]]


def is_correct(prompt: str, answer: str, text: str) -> bool:
    """Whether `text` (the prompt followed by what the model generated) continues with `answer`."""
    return text[len(prompt):].strip().startswith(answer)


def score(checks: list[dict], outputs: list[dict]) -> list[dict]:
    """Rows {prompt, expected, output, correct}, one per check, from predict's outputs (in prompt order)."""
    rows = []
    for check, out in zip(checks, outputs):
        text = out["text_generation_text"][0]
        rows.append({"prompt": check["prompt"], "expected": check["answer"], "output": text,
                     "correct": is_correct(check["prompt"], check["answer"], text)})
    return rows
