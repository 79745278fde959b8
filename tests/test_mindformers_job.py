"""A user's own MindFormers job (real mindformers 1.9.0 in its own environment) run by `mftasks.mfjob`:
fail-fast gang launch, resume on retry from MindFormers' meta.json, progress and metrics from its own lines.

The environment `.venv-mindformers` (MindFormers pins MindSpore 2.9; mftasks uses 2.10) is built by
`make test` (`make mindformers-env`); the user's entry point is tests/fixtures/mindformers_llama/run_mindformer.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mftasks.errors import ConfigError
from mftasks.launcher import FailureClass
from mftasks.mfjob import JobSpec, argv_for, parse_line, read_reports, resume_point, run_job

from conftest import REPO, free_port, mindformers_python, write_mindformers_job

SCRIPT = REPO / "tests" / "fixtures" / "mindformers_llama" / "run_mindformer.py"
SAVE_STEPS = 2
# A real line of MindFormers 1.9.0's MFLossMonitor (from a run of the tiny Llama below).
LOSS_LINE = ("2026-12-02 12:56:37,803 - mindformers/tmp/out/log[mindformers/core/callback/callback.py:747] - INFO - "
             "{ Epoch:[  1/  2], step:[    2/   16], loss:[4.856112/4.852616], per_step_time: 2885ms, lr: [0.00096198], "
             "overflow cond: False, loss_scale: unavailable, global_norm: None")


# -- reading MindFormers' own lines and files (no MindFormers needed) ---------------------------------

def test_loss_line_is_parsed_with_the_global_step():
    r = parse_line(LOSS_LINE)
    assert (r.epoch, r.epochs, r.step, r.steps, r.loss, r.per_step_ms, r.lr) == (1, 2, 2, 16, 4.856112, 2885, 0.00096198)
    assert (r.global_step, r.total_steps) == (2, 32)
    assert parse_line("INFO - .........Training Over!.............") is None


def _meta(out: Path, rank: int, step: int, name: str | None = None, make_file: bool = True) -> None:
    folder = out / "checkpoint" / f"rank_{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"CKP_rank_{rank}-1_{step}.ckpt"
    if make_file:
        (folder / name).write_bytes(b"x")
    (folder / "meta.json").write_text(json.dumps({"last_epoch": 1, "last_step": step, "last_ckpt_file": name}))


def test_resume_point_needs_every_rank_at_the_same_step(tmp_path):
    _meta(tmp_path, 0, 4)
    assert resume_point(tmp_path, 2) == (None, f"rank 1 has saved no checkpoint yet (no {tmp_path}/checkpoint/rank_1/meta.json)")
    _meta(tmp_path, 1, 2)
    assert resume_point(tmp_path, 2)[1] == "ranks saved different steps last (rank 0: 4, rank 1: 2)"
    _meta(tmp_path, 1, 4, make_file=False)
    assert "names 'CKP_rank_1-1_4.ckpt', which is not in" in resume_point(tmp_path, 2)[1]
    _meta(tmp_path, 1, 4)
    point, why = resume_point(tmp_path, 2)
    assert why == "" and point.step == 4 and point.file_name == "CKP_rank_0-1_4.ckpt"
    _meta(tmp_path, 1, 4, name="other_rank_1-1_4.ckpt")
    assert "is not rank 0's CKP_rank_0-1_4.ckpt with its rank" in resume_point(tmp_path, 2)[1]


def test_a_resumed_attempt_replaces_the_programs_load_checkpoint(tmp_path):
    _meta(tmp_path, 0, 4)
    spec = JobSpec(program=["py", "run.py", "--load_checkpoint", "base.ckpt", "--config", "c.yaml"],
                   output_dir=str(tmp_path))
    assert argv_for(spec, None) == ["py", "run.py", "--load_checkpoint", "base.ckpt", "--config", "c.yaml",
                                    "--output_dir", str(tmp_path)]
    point, _ = resume_point(tmp_path, 1)
    assert argv_for(spec, point) == ["py", "run.py", "--config", "c.yaml", "--output_dir", str(tmp_path),
                                     "--resume_training", "CKP_rank_0-1_4.ckpt",
                                     "--load_checkpoint", str(tmp_path / "checkpoint")]


def test_job_spec_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        JobSpec(program="python run.py", output_dir="", nproc_per_node=0, hang_timeout=-1)
    msg = str(err.value)
    assert "program='python run.py': must be a non-empty argv list" in msg and "output_dir='': must be a folder" in msg
    assert "nproc_per_node=0: must be an integer >= 1" in msg and "hang_timeout=-1" in msg
    with pytest.raises(ConfigError, match="program sets --output_dir: the job sets it itself"):
        JobSpec(program=["py", "run.py", "--output_dir=x"], output_dir="out")
    with pytest.raises(ConfigError, match="hang_timeout=30.0 is set but watch_progress is False"):
        JobSpec(program=["py", "run.py"], output_dir="out", watch_progress=False, hang_timeout=30)


# -- the real MindFormers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mf_python() -> str:
    return mindformers_python()


@pytest.fixture(scope="module")
def job_files(tmp_path_factory) -> dict[str, Path]:
    return write_mindformers_job(tmp_path_factory.mktemp("mfjob"), samples=32, save_steps=SAVE_STEPS)


@pytest.fixture(scope="module")
def killed_then_resumed(mf_python, job_files):
    """2 ranks, data parallel; rank 1 SIGKILLs itself after step 3 of the first attempt; attempt 1 resumes."""
    spec = JobSpec(program=[mf_python, str(SCRIPT), "--config", str(job_files["yaml"]), "--run_mode", "train",
                            "--train_dataset_dir", str(job_files["train"]), "--use_parallel", "True"],
                   output_dir=str(job_files["root"] / "out"), nproc_per_node=2, master_port=free_port(),
                   env={"FAIL_AT_STEP": "3", "FAIL_RANK": "1", "GLOG_v": "3"}, timeout=600)
    return spec, run_job(spec, attempt=0), run_job(spec, attempt=1)


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_the_retry_resumes_from_meta_json(killed_then_resumed):
    spec, first, second = killed_then_resumed
    assert not first.ok and first.launch.retryable, first.launch.summary()
    assert first.launch.root_cause.rank == 1 and first.launch.root_cause.failure_class is FailureClass.KILLED
    assert first.why_not_resumed == "first attempt"
    reached = first.reports[0][-1].global_step  # rank 0's last loss line before the gang was stopped
    assert second.ok, second.launch.summary()
    assert second.resumed_from is not None and second.resumed_from.step == SAVE_STEPS
    assert second.reports[0][0].global_step == second.resumed_from.step + 1  # MindFormers skipped what was done
    assert reached - second.resumed_from.step <= SAVE_STEPS  # steps redone <= one checkpoint interval
    assert second.reports[0][-1].global_step == second.reports[0][-1].total_steps == 4
    assert second.launch.ranks[0].last_step == 4  # the launcher followed the loss lines (hang detection)
    # per-rank logs under the attempt's own folder, with msrun's names beside them
    log_dir = Path(spec.launch_log_dir) / "attempt_1"
    assert "Training Over" in (log_dir / "worker_0.log").read_text()
    final, why = resume_point(spec.output_dir, 2)
    assert why == "", why
    import mindspore as ms

    w0, w1 = (ms.load_checkpoint(str(f)) for f in final.files)
    assert np.array_equal(w0["lm_head.weight"].asnumpy(), w1["lm_head.weight"].asnumpy())  # data parallel: equal


@pytest.mark.slow
def test_eval_and_lora_finetune_jobs_of_the_result(killed_then_resumed, mf_python, job_files):
    spec, _, _ = killed_then_resumed
    trained = resume_point(spec.output_dir, 2)[0].files[0]
    base = [mf_python, str(SCRIPT), "--config", str(job_files["yaml"])]
    ev = run_job(JobSpec(program=[*base, "--run_mode", "eval", "--eval_dataset_dir", str(job_files["eval"]),
                                  "--load_checkpoint", str(trained)],
                         output_dir=str(job_files["root"] / "eval"), env={"GLOG_v": "3"}, timeout=600,
                         watch_progress=False))  # evaluate prints no loss lines
    assert ev.ok, ev.launch.summary()
    ppl = ev.metrics["PerplexityMetric"]
    assert math.isfinite(ppl["loss"]) and ppl["PPL"] == pytest.approx(math.exp(ppl["loss"]), rel=1e-6)
    ft = run_job(JobSpec(program=[*base, "--run_mode", "finetune", "--pet_method", "lora", "--train_dataset_dir",
                                  str(job_files["train"]), "--load_checkpoint", str(trained)],
                         output_dir=str(job_files["root"] / "lora"), env={"GLOG_v": "3"}, timeout=600))
    assert ft.ok, ft.launch.summary()
    assert [r.global_step for r in ft.reports[0]] == list(range(1, 9))
    import mindspore as ms

    adapter = resume_point(job_files["root"] / "lora", 1)[0].files[0]
    names = set(ms.load_checkpoint(str(adapter)))
    assert "model.layers.0.attention.wq.mindpet_delta_lora_a" in names and "model.layers.0.attention.wv.mindpet_delta_lora_b" in names
