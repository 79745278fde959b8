"""Prompt checks (mftasks.scoring): reading the check file and scoring predictions."""
import json

from mftasks import scoring


def test_read_checks_takes_the_first_count_lines(tmp_path):
    path = tmp_path / "qa_checks.jsonl"
    rows = [{"prompt": "Q: capital of France? A:", "answer": "Paris"}, {"prompt": "Q: 2+2? A:", "answer": "4"},
            {"prompt": "Q: sky? A:", "answer": "blue"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert scoring.read_checks(path, 2) == rows[:2]
    assert scoring.read_checks(path, 10) == rows
    assert scoring.read_checks(path, 0) == []
    assert scoring.read_checks(tmp_path / "missing.jsonl", 4) == []


def test_is_correct_compares_the_generated_continuation():
    assert scoring.is_correct("Q: 2+2? A:", "4", "Q: 2+2? A: 4 and more")
    assert scoring.is_correct("Q: 2+2? A:", "4", "Q: 2+2? A:\n 4")
    assert not scoring.is_correct("Q: 2+2? A:", "4", "Q: 2+2? A: 5")
    assert not scoring.is_correct("Q: 2+2? A:", "4", "Q: 2+2? A:")


def test_score_rows_pair_checks_with_outputs_in_order():
    checks = [{"prompt": "Q: 2+2? A:", "answer": "4"}, {"prompt": "Q: sky? A:", "answer": "blue"}]
    outputs = [{"text_generation_text": ["Q: 2+2? A: 4."]}, {"text_generation_text": ["Q: sky? A: green"]}]
    assert scoring.score(checks, outputs) == [
        {"prompt": "Q: 2+2? A:", "expected": "4", "output": "Q: 2+2? A: 4.", "correct": True},
        {"prompt": "Q: sky? A:", "expected": "blue", "output": "Q: sky? A: green", "correct": False}]
    assert scoring.score([], []) == []
