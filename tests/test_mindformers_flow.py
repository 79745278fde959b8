"""The `mindformers-job` deployment through a real Prefect server and worker, with the real MindFormers 1.9.0
(its own environment, built by `make test`): a 2-rank train whose rank 1 is SIGKILLed from outside mid-run
is retried and resumes from MindFormers' meta.json; then an evaluate job's PPL and a LoRA finetune job,
each with its per-rank logs and artifacts visible through the Prefect API."""
from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from flows import stack as st
from mftasks.mfjob import read_reports, resume_point

from conftest import REPO, FlowRun, free_port, mindformers_python, write_mindformers_job

pytestmark = pytest.mark.slow
SCRIPT = "tests/fixtures/mindformers_llama/run_mindformer.py"
SAVE_STEPS = 2


@pytest.fixture(scope="module")
def job_dir():
    """build/mfflow-XXXXXXXX (project-relative: deployment parameters are project paths): YAMLs and token ids,
    64 samples (8 steps a rank at batch 4 on 2 ranks)."""
    mindformers_python()
    rel = Path("build") / f"mfflow-{uuid.uuid4().hex[:8]}"
    write_mindformers_job(REPO / rel, samples=64, save_steps=SAVE_STEPS)
    yield rel
    shutil.rmtree(REPO / rel, ignore_errors=True)


def _start(stack, **params) -> FlowRun:
    deployment = st.find_deployment(stack, "mindformers-job/mindformers-job")
    with stack.client() as c:
        run = c.create_flow_run_from_deployment(UUID(deployment["id"]), parameters={
            "entry_point": SCRIPT, "master_port": free_port(), **params})
    return FlowRun(stack, str(run.id))


def _rank_pid(flow_run_id: str, rank: int) -> int | None:
    """The pid of worker rank `rank` of this flow run (its ranks carry PREFECT__FLOW_RUN_ID and RANK_ID)."""
    for entry in os.listdir("/proc"):
        try:
            env = dict(item.split(b"=", 1) for item in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                       if b"=" in item)
        except (OSError, ValueError):
            continue
        if (env.get(b"PREFECT__FLOW_RUN_ID") == flow_run_id.encode() and env.get(b"MS_ROLE") == b"MS_WORKER"
                and env.get(b"RANK_ID") == str(rank).encode()):
            return int(entry)
    return None


@pytest.fixture(scope="module")
def trained(local_stack, job_dir):
    """The 2-rank train run, rank 1 SIGKILLed once rank 0 reported step 3 of the first attempt."""
    out = job_dir / "train"
    run = _start(local_stack, config=str(job_dir / "job.yaml"), output_dir=str(out), run_mode="train",
                 train_dataset_dir=str(job_dir / "train.npy"), nproc_per_node=2, name="train")
    first_log = REPO / out / "launch_log" / "rank_0" / "mindformer.log"

    def at_step_3():
        reports = read_reports(first_log)
        return reports and reports[-1].global_step >= 3

    deadline = time.monotonic() + 600
    while not at_step_3():
        assert time.monotonic() < deadline and run.state() not in st.TERMINAL, "the first attempt never reached step 3"
        time.sleep(0.05)
    pid = _rank_pid(run.id, 1)
    assert pid is not None, "rank 1 of the first attempt not found"
    os.kill(pid, signal.SIGKILL)
    killed_at = read_reports(first_log)[-1].global_step
    final = run.wait(900)
    return run, final, out, killed_at


def test_a_killed_rank_is_retried_and_resumes_from_meta_json(trained):
    run, final, out, killed_at = trained
    assert final["state"]["type"] == "COMPLETED", final["state"]
    task = [t for t in run.task_runs() if t["name"] == "mindformers-train"]
    assert len(task) == 1 and task[0]["run_count"] == 2  # one retry
    messages = [l["message"] for l in run.logs()]
    resumed = [m for m in messages if m.startswith("attempt 2 resumed from step")]
    assert resumed, messages[-20:]
    step = int(resumed[0].split("step ")[1].split(" ")[0])
    assert killed_at - step <= SAVE_STEPS  # steps redone <= one checkpoint interval
    assert any(m.startswith("[rank 1] ") for m in messages) and any(m.startswith("[rank 0] ") for m in messages)
    assert any("mindformers job train failed (killed, will retry)" in m for m in messages)
    loss = run.artifacts("loss-train")
    assert loss and loss[-1]["data"][0]["step"] == step + 1 and loss[-1]["data"][-1]["step"] == 8
    assert run.artifacts("ranks-train") and run.artifacts("progress-train")
    point, why = resume_point(REPO / out, 2)
    assert why == "" and point is not None


def test_eval_and_lora_finetune_jobs_of_the_result(local_stack, trained, job_dir):
    _, _, out, _ = trained
    ckpt_file = resume_point(REPO / out, 2)[0].files[0].relative_to(REPO)
    ev = _start(local_stack, config=str(job_dir / "job.yaml"), output_dir=str(job_dir / "eval"), run_mode="eval",
                eval_dataset_dir=str(job_dir / "eval.npy"), load_checkpoint=str(ckpt_file), name="eval")
    lora = _start(local_stack, config=str(job_dir / "lora.yaml"), output_dir=str(job_dir / "lora"),
                  run_mode="finetune", train_dataset_dir=str(job_dir / "train.npy"), load_checkpoint=str(ckpt_file),
                  name="lora")
    for run in (ev, lora):
        final = run.wait(900)
        assert final["state"]["type"] == "COMPLETED", final["state"]
    metrics = ev.artifacts("metrics-eval")[-1]["data"][0]
    assert metrics["metric"] == "PerplexityMetric" and metrics["PPL"] == pytest.approx(np.exp(metrics["loss"]))
    assert any(l["message"].startswith("[rank 0] ") for l in lora.logs())
    assert lora.artifacts("loss-lora")[-1]["data"][-1]["step"] == 16  # 64 samples, batch 4, one rank
    import mindspore as ms

    adapter = resume_point(REPO / job_dir / "lora", 1)[0].files[0]
    assert "model.layers.0.attention.wq.mindpet_delta_lora_a" in ms.load_checkpoint(str(adapter))
