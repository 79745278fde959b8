"""Report files and renderings (mftasks.report): loss series, summary JSON, JSONL history."""
import json

import pytest

from mftasks import report
from mftasks.errors import DiskFullError


def _metrics(folder, rows):
    path = folder / "log" / "rank_0" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")


def test_loss_series_read_each_stage_from_rank_0(tmp_path):
    _metrics(tmp_path / "train", [{"stage": "train", "step": 1, "loss": 5.5}, {"stage": "eval", "step": 1, "loss": 9.0},
                                  {"stage": "train", "step": 2, "loss": 4.25}])
    _metrics(tmp_path / "lora", [{"stage": "lora", "step": 1, "loss": 3.0}])
    assert report.loss_series({"train": tmp_path / "train", "lora": str(tmp_path / "lora"),
                               "missing": tmp_path / "none"}) == {
        "train": [(1, 5.5), (2, 4.25)], "lora": [(1, 3.0)], "missing": []}


def test_write_json_makes_the_folder_and_replaces_the_file(tmp_path):
    path = tmp_path / "runs" / "r1" / "summary.json"
    report.write_json(path, {"seconds": 1.5, "metrics": {"a": 1}}, "the run summary")
    report.write_json(path, {"seconds": 2.0}, "the run summary")
    assert json.loads(path.read_text()) == {"seconds": 2.0}


def test_append_jsonl_adds_one_line(tmp_path):
    path = tmp_path / "nightly" / "history.jsonl"
    report.append_jsonl(path, {"n": 1}, "the nightly history")
    report.append_jsonl(path, {"n": 2}, "the nightly history")
    assert path.read_text() == '{"n": 1}\n{"n": 2}\n'


def test_a_full_disk_leaves_the_history_whole_and_names_it(small_fs):
    fs = small_fs(64 * 1024)
    path = fs / "history.jsonl"
    report.append_jsonl(path, {"n": 1}, "the metrics history")
    with pytest.raises(DiskFullError) as exc:
        report.append_jsonl(path, {"pad": "x" * 200_000}, "the metrics history")
    assert str(path) in str(exc.value) and "nothing partial was kept" in str(exc.value)
    assert path.read_text() == '{"n": 1}\n'
