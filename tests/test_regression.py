"""The nightly regression check (mftasks.regression): model choice, comparison, files, the error."""
import json

import pytest

from mftasks import checkpoint as ckpt
from mftasks import regression
from mftasks.errors import MftasksError, RegressionError
from mftasks.files import atomic_write_json, sha256_file


def _published(root, run, created, body=b"weights"):
    path = root / "runs" / run / "published" / "merged.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    atomic_write_json(ckpt.manifest_path_of(path), {
        "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "file": path.name, "size": len(body),
        "sha256": sha256_file(path), "created": created, "model_config": {"name": "gpt2_tiny", "seq_length": 64}})
    return path


def test_newest_published_is_the_newest_verified_merged_model(tmp_path):
    assert regression.newest_published(tmp_path) is None
    _published(tmp_path, "a", created=100.0)
    newest = _published(tmp_path, "b", created=200.0)
    corrupt = _published(tmp_path, "c", created=300.0)
    corrupt.write_bytes(b"WEIGHTS")  # same size, other bytes: fails verification, so never chosen
    info = regression.newest_published(tmp_path)
    assert info.path == newest and info.manifest["created"] == 200.0


def test_model_to_evaluate_says_to_run_the_pipeline_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"runs/\*/published/; run finetune-gpt2 first"):
        regression.model_to_evaluate(tmp_path)
    path = _published(tmp_path, "a", created=1.0)
    assert regression.model_to_evaluate(tmp_path).path == path


def test_eval_datasets_are_the_prepared_ones_of_this_sequence_length(tmp_path):
    for name, prepared in (("pretrain-s64-v300", True), ("finetune-s64-v300", True), ("half-s64-v300", False),
                           ("pretrain-s32-v300", True)):
        (tmp_path / "data" / name).mkdir(parents=True)
        if prepared:
            (tmp_path / "data" / name / "manifest.json").write_text("{}")
    assert [p.name for p in regression.eval_datasets(tmp_path, 64)] == ["finetune-s64-v300", "pretrain-s64-v300"]
    assert regression.eval_datasets(tmp_path / "nothing", 64) == []


def test_compare_flags_growth_beyond_the_allowed_fraction_against_both_references():
    current = {"a_PPL": 11.0, "b_PPL": 20.0}
    assert regression.compare(current, None, None, 0.05) == []
    assert regression.compare(current, {"a_PPL": 10.6}, {"b_PPL": 20.0}, 0.05) == []  # +3.8% and 0%: allowed
    problems = regression.compare(current, {"a_PPL": 10.0}, {"a_PPL": 8.0, "b_PPL": 25.0}, 0.05)
    assert problems == ["a_PPL 11.000 is 10.0% worse than the previous night (10.000); allowed 5%",
                        "a_PPL 11.000 is 37.5% worse than the baseline (8.000); allowed 5%"]
    assert regression.compare({"a_PPL": 5.0}, {"a_PPL": 0.0}, None, 0.05) == []  # a zero reference is no reference


def test_previous_night_and_baseline_files(tmp_path):
    history, baseline = tmp_path / "nightly" / "history.jsonl", tmp_path / "nightly" / "baseline.json"
    assert regression.previous_night(history) is None and regression.read_baseline(baseline) is None
    regression.record_night(history, baseline, None, {"time": 1.0, "model": "m1", "metrics": {"x_PPL": 12.5}})
    assert regression.read_baseline(baseline) == {"x_PPL": 12.5}
    regression.record_night(history, baseline, {"x_PPL": 12.5}, {"time": 2.0, "model": "m2", "metrics": {"x_PPL": 9.0}})
    assert regression.read_baseline(baseline) == {"x_PPL": 12.5}  # kept until replaced
    assert regression.previous_night(history) == {"x_PPL": 9.0}
    assert [json.loads(line)["model"] for line in history.read_text().splitlines()] == ["m1", "m2"]
    history.write_text("\n")
    assert regression.previous_night(history) is None


def test_markdown_lists_the_regressions_or_says_none():
    rows = [{"metric": "x_PPL", "value": 9.0, "previous": 12.5, "delta": -3.5}]
    fine = regression.markdown("runs/r/published/merged.ckpt", rows, [])
    assert fine == ("## Nightly eval of `runs/r/published/merged.ckpt`\n\n| metric | value | previous | delta |\n"
                    "|---|---|---|---|\n| x_PPL | 9 | 12.5 | -3.5 |\n\nNo regression.")
    bad = regression.markdown("m", rows, ["x_PPL worse", "y_PPL worse"])
    assert bad.endswith("\n\n**Regressions:**\n- x_PPL worse\n- y_PPL worse")


def test_raise_for_lists_every_regression_in_one_project_error():
    regression.raise_for([])
    with pytest.raises(RegressionError) as exc:
        regression.raise_for(["a worse", "b worse"])
    assert isinstance(exc.value, MftasksError)
    assert str(exc.value) == "perplexity regressed:\n  - a worse\n  - b worse"
