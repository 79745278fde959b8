"""Prompts are data (issue 11, case 2): a pipeline stage hands its prompts to the rank as a file, never
as argv, so a prompt that reads like an option (`--result_file=/x`, `--output_dir=/y`) is predicted as
text; `mftasks run --run_mode predict` without input texts is an error, not a prediction of "hello!"."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mftasks import Trainer, TrainingArguments
from mftasks.errors import MftasksError
from mftasks.stage import StageSpec, run_stage

REPO = Path(__file__).resolve().parents[1]


def train_tiny(out: Path, dataset: Path) -> Path:
    """Two steps of gpt2_tiny: a real, verified checkpoint to predict with (its manifest names the tokenizer)."""
    args = TrainingArguments(output_dir=str(out), batch_size=4, max_steps=2, save_steps=2, warmup_steps=1,
                             logging_steps=1, seed=7)
    result = Trainer(model={"model_type": "gpt2_tiny"}, args=args, train_dataset=str(dataset)).train()
    return Path(result.checkpoint)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dataset) -> Path:
    return train_tiny(tmp_path_factory.mktemp("predict-ckpt") / "output", tiny_dataset)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def short_tmp():
    """A folder with a short absolute name (gpt2_tiny's context is 64 tokens: the prompts hold paths)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="p", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_hostile_prompts_are_predicted_as_text(short_tmp, checkpoint):
    tmp_path = short_tmp
    project = tmp_path / "project"
    project.mkdir()
    target = tmp_path / "t.json"
    target.write_text("precious\n")
    elsewhere = tmp_path / "e"
    canary = tmp_path / "c"
    # Parsed as argv, these are two prompts and two options that write where the caller chose.
    prompts = [f"$(touch {canary})", "Question: hi", f"--result_file={target}", f"--output_dir={elsewhere}"]
    before_target = target.stat().st_mtime_ns
    before = _tree(tmp_path)
    spec = StageSpec(name="predict", run_mode="predict", output_dir=str(project / "out"), model_type="gpt2_tiny",
                     load_checkpoint=str(checkpoint), predict_data=prompts, max_new_tokens=2)
    try:
        result = run_stage(spec, project / "work")
    except MftasksError as exc:  # check the files first: they are the point
        result = exc
    assert target.read_text() == "precious\n" and target.stat().st_mtime_ns == before_target
    assert not elsewhere.exists() and not canary.exists()
    assert not isinstance(result, Exception), result
    assert len(result.result) == len(prompts)  # every prompt predicted, none parsed as an option
    for prompt, out in zip(prompts, result.result):
        text = out["text_generation_text"][0]
        assert text.startswith(prompt) if "$" not in prompt else prompt[1:] in text, (prompt, text)  # $ is unknown
    written = sorted(set(_tree(tmp_path)) - set(before))
    assert written and all(p.startswith("project/") for p in written), written  # nothing outside the project
    stage = project / "work" / "stages" / "predict"
    assert json.loads((stage / "prompts.json").read_text()) == prompts  # the prompts travel as data


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mftasks.cli", "run", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "GLOG_v": "3"}, timeout=300, stdin=subprocess.DEVNULL)


def test_predict_without_inputs_is_an_error(tmp_path, checkpoint):
    """It used to predict "hello!" and exit 0."""
    r = _run_cli("--config", str(REPO / "configs/gpt2/run_gpt2_tiny.yaml"), "--run_mode", "predict",
                 "--load_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: invalid configuration in mftasks run: run_mode predict needs input texts: "
                               "--predict_data TEXT [TEXT ...] or --predict_file FILE"), r.stderr
    assert "hello" not in r.stdout and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it (No such file or directory)"),
    ("not json", "not a JSON list of strings"),
    ('{"prompt": "hi"}', "must hold a non-empty JSON list of strings"),
    ("[]", "must hold a non-empty JSON list of strings"),
    ('["hi", 3]', "must hold a non-empty JSON list of strings"),
], ids=["missing", "not-json", "object", "empty", "not-strings"])
def test_bad_predict_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content)
    r = _run_cli("--config", str(REPO / "configs/gpt2/run_gpt2_tiny.yaml"), "--run_mode", "predict",
                 "--predict_file", str(path), "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: invalid configuration in mftasks run: --predict_file {path}: {message}"), \
        r.stderr


def test_predict_data_with_another_run_mode_is_an_error(tmp_path):
    r = _run_cli("--config", str(REPO / "configs/gpt2/run_gpt2_tiny.yaml"), "--run_mode", "eval",
                 "--predict_data", "hi", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--predict_data is only used with run_mode predict (run_mode is eval)" in r.stderr, r.stderr


def test_predict_data_naming_a_text_file_reads_one_prompt_a_line(tmp_path, checkpoint):
    """MindFormers' `--predict_data input_predict_data.txt --predict_batch_size N`."""
    lines = tmp_path / "input_predict_data.txt"
    lines.write_text("Question: hi\nhello!\n--output_dir=/x\n")
    out = tmp_path / "out"
    r = _run_cli("--config", str(REPO / "configs/gpt2/run_gpt2_tiny.yaml"), "--run_mode", "predict",
                 "--predict_data", str(lines), "--predict_batch_size", "2", "--load_checkpoint", str(checkpoint),
                 "--output_dir", str(out), "--result_file", str(tmp_path / "r.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((tmp_path / "r.json").read_text())["result"]
    assert [x["text_generation_text"][0].split("\n")[0][:len(p)] for x, p in
            zip(results, ["Question: hi", "hello!", "--output_dir=/x"])] == ["Question: hi", "hello!", "--output_dir=/x"]
    assert (out / "text_generation_result.txt").read_text().splitlines() == [str(x) for x in results]
