"""End-to-end runs in fresh processes: our example, `mftasks run`, and MindFormers' own sample script."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv, cwd, timeout=600):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=str(REPO))
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout


def _last_literal(stdout: str):
    return ast.literal_eval(stdout.strip().splitlines()[-1])


def test_example_runs_all_four_modes(tmp_path, tiny_dataset, tiny_finetune_dataset):
    ex = [sys.executable, str(REPO / "examples" / "gpt2_text_generation.py"), "--model_type", "gpt2_tiny",
          "--max_steps", "6", "--output_dir", str(tmp_path / "out")]
    assert "trained 6 steps" in _run(ex + ["--run_mode", "train", "--train_dataset", str(tiny_dataset)], tmp_path)
    metrics = _last_literal(_run(ex + ["--run_mode", "eval", "--eval_dataset", str(tiny_dataset)], tmp_path))
    assert set(metrics) == {"loss", "PPL"} and metrics["PPL"] > 1
    out = _run(ex + ["--run_mode", "finetune", "--pet_method", "lora", "--train_dataset", str(tiny_finetune_dataset)],
               tmp_path)
    assert "finetuned 6 steps" in out and "mindformers_lora_rank_0-1_6.ckpt" in out
    result = _last_literal(_run(ex + ["--run_mode", "predict", "--predict_data", "hello!"], tmp_path))
    assert result[0]["text_generation_text"][0].startswith("hello!")


def test_mftasks_run_all_four_modes(tmp_path, tiny_dataset, tiny_finetune_dataset):
    cli = [sys.executable, "-m", "mftasks.cli", "run", "--config", str(REPO / "configs/gpt2/run_gpt2_tiny.yaml"),
           "--output_dir", str(tmp_path / "out")]
    _run(cli + ["--run_mode", "train", "--train_dataset", str(tiny_dataset)], tmp_path)
    ckpts = sorted((tmp_path / "out" / "checkpoint" / "rank_0").glob("mindformers_rank_0-*.ckpt"))
    assert [p.name for p in ckpts] == ["mindformers_rank_0-1_2.ckpt", "mindformers_rank_0-1_4.ckpt"]
    metrics = _last_literal(_run(cli + ["--run_mode", "eval", "--eval_dataset", str(tiny_dataset)], tmp_path))
    assert metrics["loss"] > 0
    _run(cli + ["--run_mode", "finetune", "--pet_method", "lora", "--train_dataset", str(tiny_finetune_dataset)],
         tmp_path)
    assert list((tmp_path / "out" / "checkpoint" / "rank_0").glob("mindformers_lora_rank_0-1_4.ckpt"))
    result = _last_literal(_run(cli + ["--run_mode", "predict", "--predict_data", "hello!", "Question:"], tmp_path))
    assert len(result) == 2 and result[1]["text_generation_text"][0].startswith("Question:")


def test_mftasks_run_reports_bad_config_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_mode: train\ntraining:\n  lerning_rate: 0.1\n  batch_size: 0\n")
    r = subprocess.run([sys.executable, "-m", "mftasks.cli", "run", "--config", str(bad)], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2
    assert "unknown key 'lerning_rate' at training.lerning_rate" in r.stderr and "batch_size" in r.stderr
    assert str(bad) in r.stderr and not (tmp_path / "output").exists()


def test_mindformers_standalone_sample_runs_unchanged(tmp_path, corpus_dir, tiny_dataset, tiny_finetune_dataset):
    """MindFormers' standalone_task.py, only the import and device changed, in its four documented modes.

    Its TrainingArguments use warmup_steps=100 and one epoch at batch 2: the data must give > 100 steps.
    Datasets are passed as the guide does: the split folders (`--train_dataset DATA/train --eval_dataset DATA/eval`)."""
    from conftest import small_pretrain

    pretrain = small_pretrain(tmp_path / "data", corpus_dir, tiny_dataset / "tokenizer.model", 240)
    sample = [sys.executable, str(REPO / "tests" / "fixtures" / "mindformers_standalone_task.py"),
              "--task", "text_generation", "--model_type", "gpt2_tiny"]
    _run(sample + ["--train_dataset", str(pretrain / "train"), "--run_mode", "train"], tmp_path)
    assert list((tmp_path / "output" / "checkpoint" / "rank_0").glob("mindformers_rank_0-1_*.ckpt"))
    _run(sample + ["--eval_dataset", str(pretrain / "eval"), "--run_mode", "eval"], tmp_path)
    _run(sample + ["--train_dataset", str(tiny_finetune_dataset / "train"), "--pet_method", "lora", "--run_mode",
                   "finetune"],
         tmp_path)
    out = _run(sample + ["--predict_data", "hello!", "--run_mode", "predict"], tmp_path)
    result = _last_literal(out)
    assert result[0]["text_generation_text"][0].startswith("hello!")
    log = (tmp_path / "output" / "log" / "rank_0" / "mindformer.log").read_text()
    assert "train finished" in log and "lora finished" in log and "evaluate:" in log
