"""Six faults injected into real finetune-gpt2 deployment runs (2 ranks, gpt2_tiny), and the recovery.

To keep this folder cheap, four flow runs carry the six faults, all at once (MFTASKS_FAULTS_SERIAL=1:
one at a time, for clean timings):

- `reference`: train uninterrupted (the weights every resumed run must reproduce); in the long LoRA
  stage the flow-run process is SIGKILLed (fault 3), then `prefect flow-run retry`.
- `rank_faults`: train: rank 1 SIGKILLed (fault 1); in the retry the newest checkpoint is truncated and
  rank 1 killed again (fault 4); LoRA: rank 1 SIGSTOPped (fault 2).
- `disk_full`: the train folder is a real, nearly full tmpfs: the step-8 checkpoints do not fit (fault 5);
  the test frees the space once the failed gang is gone.
- `user_error`: batch_size 4096 on the tiny dataset (fault 6).

Each scenario only observes and records (one thread per flow run); the tests assert.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest
from prefect.states import Cancelled

from flows import stack as st
from mftasks import checkpoint as ckpt
from mftasks.process import alive

from .conftest import (BASE_PARAMS, NPROC, REPO, RUN_TIMEOUT, STARTED, Recovery, Run, detect_time,
                       fill_to, flow_run_of, follow_recovery, kill, kill_leftovers, load_weights, mount_tmpfs,
                       tmpfs_unavailable, unmount)

pytestmark = pytest.mark.slow

SAVE = BASE_PARAMS["save_every"]
HANG_TIMEOUT = 8.0
# The flow-run process is killed in the reference run's LoRA stage; its ranks live on without it and
# must still be running when the retry starts (~10-25 s later), so that stage is long (the run is stopped
# once the retry has made a step, so its length costs nothing), and checkpoints rarely (a rank killed
# between the two ranks' commits of one step would hit the resume gap described in docs/RELIABILITY.md).
LONG_LORA_STEPS, LONG_LORA_SAVE = 3000, 50


# ---------------------------------------------------------------------------------------------- helpers
def last_step(run: Run, stage: str, rank: int) -> int:
    rows = run.metrics(stage, rank)
    return rows[-1]["step"] if rows else 0


def truncate(path: Path) -> int:
    """Cut a (read-only, 0400) checkpoint file to half its size; return the new size."""
    os.chmod(path, 0o600)
    size = path.stat().st_size // 2
    os.truncate(path, size)
    return size


def active_slots(stack) -> int | None:
    try:
        with stack.client() as c:
            return c.read_global_concurrency_limit_by_name("devices-local").active_slots
    except Exception:  # noqa: BLE001 - informative only
        return None


def abort(run: Run) -> dict:
    """Stop a run once it has shown what its test needs: SIGKILL the flow-run process and every rank of it
    (the run ends Crashed; its device slots come back when their lease expires)."""
    deadline = time.monotonic() + 30
    while kill_leftovers([run.id]) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.wait_for("the aborted run to end", lambda: run.state() in st.TERMINAL, 120, poll=0.5, ends=())
    return run.read()


def publish(run: Run, recs: list[Recovery], report: list) -> None:
    """The recovery breakdown as a markdown artifact of the run, and into the session report."""
    for rec in recs:
        report.append({"run": run.id, **rec.to_dict()})
    try:
        run.add_markdown_artifact("recovery", "\n\n".join(r.markdown() for r in recs),
                                  "fault -> detect -> teardown -> restart -> first step")
    except Exception:  # noqa: BLE001 - the artifact is a convenience
        pass


def rank_table(run: Run, stage: str) -> list[dict]:
    return [row for a in run.artifacts(f"ranks-{stage}") for row in a["data"]]


# ---------------------------------------------------------------------------------------------- scenarios
def scenario_reference(stack, work, report) -> dict:
    """Train uninterrupted; SIGKILL the flow-run process mid-LoRA; `prefect flow-run retry`; stop the run once
    the resumed LoRA stage has made its first step."""
    run = Run.start(stack, work, finetune_steps=LONG_LORA_STEPS, save_every=LONG_LORA_SAVE)
    ev: dict = {"run": run}
    old = run.wait_for("the lora gang", lambda: run.pids("lora"), RUN_TIMEOUT)
    run.wait_for(f"lora step {LONG_LORA_SAVE + 2}",
                 lambda: min(last_step(run, "lora", r) for r in range(NPROC)) >= LONG_LORA_SAVE + 2, 300)
    launcher = old["launcher_pid"]
    ev["launcher_is_the_flow_run"] = flow_run_of(launcher) == run.id
    rec = Recovery("flow-run process SIGKILL", "lora", kill(launcher, signal.SIGKILL),
                   detected_by="Prefect (the run's state becomes Crashed)")
    ev["killed_at_step"] = last_step(run, "lora", 0)
    run.wait_for("the Crashed state", lambda: run.state() == "CRASHED", 120, poll=0.1, ends=())
    rec.t_detect = _ts([s for s in run.states() if s["type"] == "CRASHED"][-1]["timestamp"])
    ev["slots_after_crash"] = active_slots(stack)
    # the launcher's guard process sees the flow-run process gone and stops the gang it left behind
    rec.t_gone = run.wait_for(f"the orphaned gang {old['pids']} to be stopped by its guard",
                              lambda: None if any(alive(p) for p in old["pids"]) else time.time(), 30, poll=0.02,
                              ends=())
    t_gone = rec.t_gone
    ev["guard_logs"] = [p.read_text() for p in sorted((run.stage("lora") / "log").rglob("guard.log"))]
    retry = subprocess.run([stack.prefect(), "flow-run", "retry", run.id], env=stack.env(), cwd=REPO,
                           capture_output=True, text=True, timeout=180)
    ev["t_retry"] = time.time()
    ev["retry"] = (retry.returncode, retry.stdout + retry.stderr)
    ev["orphans_alive_at_retry"] = [alive(p) for p in old["pids"]]
    ev["old"] = old
    try:  # a transient Crashed is expected after the retry (docs/RELIABILITY.md), Failed is not
        ev["new"] = follow_recovery(run, "lora", old, rec, ends=("FAILED", "CANCELLED", "COMPLETED"))
    except AssertionError as exc:  # keep the evidence: the train stage before is the reference of another test
        ev["recovery_error"] = str(exc)
    rec.t_gone = t_gone  # follow_recovery saw them gone only after the retry
    rec.notes.append(f"teardown: the launcher's guard stops the orphaned gang; restart includes `prefect flow-run "
                     f"retry` ({ev['t_retry'] - rec.t_detect:.1f} s after Crashed) and the new flow-run "
                     "process's start")
    if "new" in ev:  # log records reach the API a moment later; the kill below would lose what is not there yet
        run.wait_for("the resume line in the run's logs", lambda: any(
            f"resuming at step {rec.resume_step} from" in rec_["message"] for rec_ in run.logs()), 60, poll=1.0,
            ends=())
    ev["states"] = run.states()
    ev["logs"] = run.logs()
    ev["task_runs"] = run.task_runs()
    # the resumed LoRA stage has made a step: that is all this run has to show (the rest of the pipeline,
    # retries included, is the rank_faults run's), so stop it instead of training and evaluating on
    ev["final"] = abort(run)
    ev["recovery"] = rec
    publish(run, [rec], report)
    return ev


def scenario_rank_faults(stack, work, report) -> dict:
    """train: SIGKILL rank 1 (fault 1); then truncate the retry's first checkpoint and kill again (fault 4);
    lora: SIGSTOP rank 1 (fault 2)."""
    # a long LoRA stage: the stack dump's SIGCONT lets the gang run on for a second (docs/RELIABILITY.md, gap 7),
    # which must not be enough to finish it
    run = Run.start(stack, work, finetune_steps=200, hang_timeout_s=HANG_TIMEOUT)
    ev: dict = {"run": run}

    # fault 1: rank 1 SIGKILLed mid-interval (step >= 6; the last checkpoint is step 4)
    old0 = run.wait_for("the train gang", lambda: run.pids("train"), RUN_TIMEOUT)
    run.wait_for("train step 6 on rank 1", lambda: last_step(run, "train", 1) >= 6, 300, poll=0.02)
    beat = run.heartbeat("train", 1)
    ev["killed_pid_in_gang"] = beat["pid"] in old0["pids"]
    rec1 = Recovery("rank 1 SIGKILL", "train", kill(beat["pid"], signal.SIGKILL))
    ev["new1"] = follow_recovery(run, "train", old0, rec1)
    ev["old0"] = old0

    # fault 4: the retry's first checkpoint committed on both ranks, then truncated, then rank 1 killed
    step = (rec1.resume_step // SAVE + 1) * SAVE
    new1 = ev["new1"]
    run.wait_for(f"the step-{step} checkpoint of the retry on every rank",
                 lambda: all((c := run.checkpoint("train", r, step)) and c.manifest["created"] >= new1["time"]
                             for r in range(NPROC)), 300, poll=0.02)
    files = [run.checkpoint("train", r, step).path for r in range(NPROC)]
    for f in files:
        truncate(f)
    pid = run.heartbeat("train", 1)["pid"]
    ev["killed_pid_in_gang_4"] = pid in new1["pids"]
    rec4 = Recovery(f"newest checkpoint (step {step}) truncated + rank 1 SIGKILL", "train",
                    kill(pid, signal.SIGKILL))
    ev["truncated"], ev["truncated_step"] = files, step
    ev["newer_at_kill"] = [s for s in (step + SAVE,) if any(run.checkpoint("train", r, s) for r in range(NPROC))]
    ev["new2"] = follow_recovery(run, "train", new1, rec4)

    # fault 2: rank 1 of the LoRA stage SIGSTOPped: a hang
    old_l = run.wait_for("the lora gang", lambda: run.pids("lora"), RUN_TIMEOUT)
    run.wait_for("lora step 3 on rank 1", lambda: last_step(run, "lora", 1) >= 3, 300, poll=0.02)
    pid = run.heartbeat("lora", 1)["pid"]
    ev["stopped_pid_in_gang"] = pid in old_l["pids"]
    rec2 = Recovery("rank 1 SIGSTOP (hang)", "lora", kill(pid, signal.SIGSTOP))
    ev["new_l"] = follow_recovery(run, "lora", old_l, rec2)
    ev["hang_logs"] = {r: run.rank_log("lora", r, attempt=0) for r in range(NPROC)}

    ev["final"] = run.wait(RUN_TIMEOUT)
    ev["logs"] = run.logs()
    ev["verdicts"] = verdicts = run.verdicts()
    rec1.t_detect = detect_time(verdicts, "train", old0, 0)
    rec4.t_detect = detect_time(verdicts, "train", new1, 1)
    rec2.t_detect = detect_time(verdicts, "lora", old_l, 0)
    ev["task_runs"] = run.task_runs()
    ev["metrics"] = run.metrics("train", 0)
    ev.update(rec1=rec1, rec4=rec4, rec2=rec2)
    publish(run, [rec1, rec4, rec2], report)
    return ev


# Fault 5: the train folder is a real tmpfs of its own.  A filler file leaves room for what the train stage
# writes up to its step-4 checkpoints on both ranks (the tokenizer copy, logs, the checkpoints and their
# manifests) plus half a checkpoint, so the step-8 checkpoint fits on no rank.
TMPFS_SIZE = 32 << 20  # enough for the whole retried stage (4 checkpoints x 2 ranks) once the filler is gone
LOG_ALLOWANCE = 128 << 10  # per rank: mindformer.log, metrics.jsonl, heartbeat.json and its temporary
PAGE = 4096


def _pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def disk_full_budget(work: Path) -> dict:
    """Bytes to leave free on the train folder's tmpfs, from the model's parameter count (a checkpoint holds
    the fp32 weights and Adam's two moments: 12 bytes a parameter, plus a few KB of names and scalars) and
    the size of the dataset's tokenizer (copied into the folder)."""
    from mftasks.model import GPT2Config, GPT2LMHeadModel, num_parameters

    cfg = GPT2Config.from_name(BASE_PARAMS["model_type"], vocab_size=BASE_PARAMS["vocab_size"])
    params = num_parameters(GPT2LMHeadModel(cfg))
    data = 12 * params
    tokenizers = list((REPO / work / "pipeline" / "data").glob("pretrain-*/tokenizer.model"))
    assert tokenizers, f"no prepared pretrain dataset under {work}/pipeline/data"
    tokenizer = max(p.stat().st_size for p in tokenizers)
    per_rank = _pages(data + (16 << 10)) + 3 * PAGE + LOG_ALLOWANCE  # + manifest, meta.json, a temporary
    return {"parameters": params, "checkpoint_data": data, "tokenizer": tokenizer,
            "free": _pages(tokenizer) + NPROC * per_rank + _pages(data // 2)}


_HIDDEN_TEMPORARY = re.compile(r"^\..*tmp")


def scenario_disk_full(stack, work, report) -> dict:
    """A real full disk: rank 0 and 1's step-8 checkpoints do not fit on the train folder's tmpfs; once the
    failed gang is gone the test deletes its filler file (as an operator frees space) and the retry resumes
    from step 4."""
    reason = tmpfs_unavailable()
    if reason:
        print(f"fault 5 (disk full) skipped: {reason}")
        return {"skipped": reason}
    budget = disk_full_budget(work)
    run = Run.start(stack, work, start_in=4.0)  # its folder is prepared before its flow runs
    ev: dict = {"run": run, "budget": budget}
    point = run.out("train")
    reason = mount_tmpfs(point, TMPFS_SIZE)
    if reason:
        print(f"fault 5 (disk full) skipped: {reason}")
        with stack.client() as c:
            c.set_flow_run_state(UUID(run.id), Cancelled(), force=True)
        kill_leftovers([run.id])
        return {"skipped": reason}
    try:
        ev["state_at_mount"] = run.state()
        filler = fill_to(point, budget["free"])
        ev["free_at_start"] = shutil.disk_usage(point).free
        return _disk_full(run, point, filler, ev, report)
    finally:
        unmount(point)


def _disk_full(run: Run, point: Path, filler: Path, ev: dict, report) -> dict:
    old = run.wait_for("the train gang", lambda: run.pids("train"), RUN_TIMEOUT)
    records = [run.stage("train") / "log" / f"rank_{r}" / "error.json" for r in range(NPROC)]

    def failed():  # a rank's error record is written as its exception leaves it
        if all(run.checkpoint("train", r, 2 * SAVE) for r in range(NPROC)):
            raise AssertionError(f"the step-{2 * SAVE} checkpoints fit on every rank: the tmpfs budget "
                                 f"{ev['budget']} is wrong")
        times = [p.stat().st_mtime for p in records if p.exists()]
        return min(times) if times else None
    t_fault = run.wait_for("a rank's failure record", failed, 300, poll=0.02)
    rec = Recovery(f"real full disk (tmpfs) at the step-{2 * SAVE} checkpoint", "train", t_fault)

    def snapshot():  # between the failed attempt and the retry
        try:
            ev["files_after_failure"] = sorted(p.relative_to(point).as_posix() for p in point.rglob("*"))
            ev["verified_after_failure"] = {p.relative_to(point).as_posix(): ckpt.verify(p)
                                            for p in sorted(point.glob("checkpoint/rank_*/*.ckpt"))}
            ev["sizes_after_failure"] = {p.relative_to(point).as_posix(): p.stat().st_size
                                         for p in sorted(point.glob("checkpoint/rank_*/*.ckpt"))}
            ev["free_after_failure"] = shutil.disk_usage(point).free
            ev["records"] = {r: json.loads(p.read_text()) for r, p in enumerate(records) if p.exists()}
        finally:
            filler.unlink()  # free the space: the retry must get through
            ev["free_after_freeing"] = shutil.disk_usage(point).free
    try:
        ev["new"] = follow_recovery(run, "train", old, rec, on_gone=snapshot)
    except AssertionError as exc:  # kept as evidence for test_disk_full_retry_completes
        ev["recovery_error"], ev["new"] = str(exc), run.pids("train")
    # each rank logs "resuming at step N from FILE" before its first step
    texts = {r: run.rank_log("train", r, attempt=1) for r in range(NPROC)}
    ev["attempt1_log_tails"] = {r: t[-3000:] for r, t in texts.items()}
    ev["resume_steps"] = {r: int(t.split("resuming at step ", 1)[1].split()[0].rstrip(","))
                          for r, t in texts.items() if "resuming at step " in t}
    if "recovery_error" not in ev:
        # the retried stage finishes (and is merged): the rest of the pipeline is not this test's business
        ev["train_completed"] = bool(run.wait_for(
            "the retried train stage to finish", lambda: (run.dir / "published" / "base.ckpt").exists(), 300,
            ends=("FAILED", "CANCELLED", "CRASHED")))
    ev["logs"] = run.logs()
    ev["verdicts"] = run.verdicts()
    ev["final"] = abort(run)  # a finished train stage has shown enough
    ev["task_runs"] = run.task_runs()
    rec.t_detect = detect_time(ev["verdicts"], "train", old, 0)
    sizes = ev.get("sizes_after_failure", {})
    rec.notes.append(f"tmpfs: {ev['free_at_start']} bytes free at the start (filler), {ev.get('free_after_failure')} "
                     f"when the gang was gone; checkpoints then: {sizes}; the filler was deleted before the retry")
    verdicts = [v["message"] for v in ev["verdicts"] if v["stage"] == "train"]
    rec.notes.append(f"verdict: {verdicts[0] if verdicts else '-'}")
    ev["recovery"] = rec
    publish(run, [rec], report)
    return ev


def scenario_user_error(stack, work, report) -> dict:
    """batch_size 4096 on the tiny dataset: the Trainer's ConfigError inside every rank."""
    run = Run.start(stack, work, batch_size=4096)
    ev: dict = {"run": run}
    old = run.wait_for("the train gang", lambda: run.pids("train"), RUN_TIMEOUT)
    rec = Recovery("user error (batch_size 4096 > the dataset)", "train", old["time"],
                   detected_by="launcher (the gang's start counts as the fault)")
    rec.t_gone = run.wait_for("the gang to end", lambda: None if any(alive(p) for p in old["pids"]) else time.time(),
                              300, poll=0.02, ends=())
    rec.notes.append("not retried: the failure class is user_error")
    ev["final"] = run.wait(RUN_TIMEOUT)
    ev["logs"] = run.logs()
    ev["verdicts"] = run.verdicts()
    ev["task_runs"] = run.task_runs()
    ev["rank_table"] = rank_table(run, "train")
    ev["attempt_dirs"] = sorted(p.name for p in (run.stage("train") / "log").glob("attempt_*"))
    rec.t_detect = detect_time(ev["verdicts"], "train", old, 0)
    ev["recovery"] = rec
    publish(run, [rec], report)
    return ev


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


SCENARIOS = {"reference": scenario_reference, "rank_faults": scenario_rank_faults,
             "user_error": scenario_user_error, "disk_full": scenario_disk_full}
NEEDS = {
    "test_killed_rank_stops_the_gang_fast_and_resume_matches_an_uninterrupted_run": ("reference", "rank_faults"),
    "test_truncated_newest_checkpoint_falls_back_to_the_previous_one": ("rank_faults",),
    "test_hung_rank_is_detected_with_stacks_and_retried": ("rank_faults",),
    "test_killed_flow_process_crashes_and_retry_resumes_without_a_second_gang": ("reference",),
    "test_disk_full_keeps_the_previous_checkpoint_and_names_the_space_needed": ("disk_full",),
    "test_disk_full_retry_completes": ("disk_full",),
    "test_user_error_fails_fast_without_retry": ("user_error",),
}


@pytest.fixture(scope="module")
def scenarios(request, fault_stack, fault_work, recovery_report):
    """Start the scenarios the selected tests need, all at once (MFTASKS_FAULTS_SERIAL=1: one at a time),
    once the datasets are prepared and cached."""
    selected = [i.originalname for i in request.session.items if getattr(i, "module", None) is request.module]
    wanted = [s for s in SCENARIOS if any(s in NEEDS.get(name, ()) for name in selected)]
    prep = st.run_deployment(fault_stack, "prepare-data", {
        "corpus_dir": str(fault_work / "corpus"), "work_dir": str(fault_work / "pipeline"),
        "model_type": BASE_PARAMS["model_type"], "vocab_size": BASE_PARAMS["vocab_size"]})
    assert st.watch(fault_stack, prep["id"], timeout=RUN_TIMEOUT)["state"]["type"] == "COMPLETED"
    pool = ThreadPoolExecutor(1 if os.environ.get("MFTASKS_FAULTS_SERIAL") else max(len(wanted), 1),
                              thread_name_prefix="fault")
    futures = {s: pool.submit(SCENARIOS[s], fault_stack, fault_work, recovery_report) for s in wanted}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    kill_leftovers(STARTED)  # nothing of a half-finished scenario outlives the module


def _result(scenarios, name):
    return scenarios[name].result(timeout=2 * RUN_TIMEOUT)


def _messages(ev) -> list[str]:
    return [l["message"] for l in ev["logs"]]


def _launches(ev, stage: str) -> list[dict]:
    """The launch task runs of a stage: named after it, tagged launch-ranks."""
    return [t for t in ev["task_runs"] if t["name"] == stage and "launch-ranks" in t["tags"]]


# ---------------------------------------------------------------------------------------------- tests
def test_killed_rank_stops_the_gang_fast_and_resume_matches_an_uninterrupted_run(scenarios):
    ev, ref = _result(scenarios, "rank_faults"), _result(scenarios, "reference")
    rec = ev["rec1"]
    assert ev["killed_pid_in_gang"]
    assert rec.t_gone - rec.t_fault <= 3.0, rec.to_dict()  # every rank and the scheduler gone within 3 s
    failures = [f for f in ev["verdicts"] if f["stage"] == "train"]
    assert failures[0]["class"] == "killed" and failures[0]["retryable"], failures[0]
    assert "rank 1 was killed by SIGKILL" in failures[0]["what"]
    assert rec.resume_step in (4, 8) and rec.resume_step > 0  # resumed from a checkpoint, not from scratch
    assert 0 <= rec.last_step_before - rec.resume_step <= SAVE  # steps redone <= the checkpoint interval
    assert any(f"resuming at step {rec.resume_step} from" in m for m in _messages(ev))
    train = _launches(ev, "train")
    assert [t["run_count"] for t in train] == [3] and train[0]["state"]["type"] == "COMPLETED"
    assert ev["final"]["state"]["type"] == "COMPLETED", ev["final"]["state"]

    mine = load_weights(ev["run"].dir / "published" / "base.ckpt")
    theirs = load_weights(ref["run"].dir / "published" / "base.ckpt")
    assert mine.keys() == theirs.keys()
    worst = max(float(np.max(np.abs(mine[k] - theirs[k]))) for k in mine)
    assert worst <= 1e-5, f"max |resumed - uninterrupted| = {worst}"


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(scenarios):
    ev = _result(scenarios, "rank_faults")
    rec, step = ev["rec4"], ev["truncated_step"]
    assert ev["killed_pid_in_gang_4"] and not ev["newer_at_kill"]
    assert rec.resume_step == step - SAVE  # the previous verified checkpoint, on every rank
    warnings = [m for m in _messages(ev) if "skipping checkpoint" in m and "falling back" in m]
    for r, f in enumerate(ev["truncated"]):
        assert any(f"[rank {r}]" in m and f.name in m and "truncated or changed" in m for m in warnings), warnings
    assert ev["final"]["state"]["type"] == "COMPLETED"


def test_hung_rank_is_detected_with_stacks_and_retried(scenarios):
    ev = _result(scenarios, "rank_faults")
    rec = ev["rec2"]
    assert ev["stopped_pid_in_gang"]
    failures = [f for f in ev["verdicts"] if f["stage"] == "lora"]
    assert failures and failures[0]["class"] == "hang" and failures[0]["retryable"], failures
    # the hang clock starts at the last heartbeat progress the launcher saw (heartbeats every 0.5 s, read every
    # 0.25 s), which can be up to ~0.75 s before the SIGSTOP
    assert HANG_TIMEOUT - 1.0 <= rec.t_detect - rec.t_fault <= HANG_TIMEOUT + 3.0, rec.to_dict()
    for rank, text in ev["hang_logs"].items():  # every rank's stacks, written by faulthandler on SIGUSR1
        assert "[mftasks launcher] hang detected" in text, rank
        assert re.search(r"(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n  File \"", text), \
            (rank, text[-2000:])
    lora = _launches(ev, "lora")
    assert [t["run_count"] for t in lora] == [2] and lora[0]["state"]["type"] == "COMPLETED"
    assert ev["final"]["state"]["type"] == "COMPLETED"


def test_killed_flow_process_crashes_and_retry_resumes_without_a_second_gang(scenarios):
    ev = _result(scenarios, "reference")
    rec, old = ev["recovery"], ev["old"]
    assert ev["launcher_is_the_flow_run"]
    assert any(s["type"] == "CRASHED" for s in ev["states"])
    assert rec.t_detect - rec.t_fault < 30, rec.to_dict()
    assert ev["retry"][0] == 0, ev["retry"]
    # the old ranks did not outlive their launcher by more than the stop grace: its guard stopped them ...
    assert rec.t_gone - rec.t_fault <= 3.0, rec.to_dict()
    assert not any(ev["orphans_alive_at_retry"]), ev["orphans_alive_at_retry"]
    assert any(f"the launcher (pid {old['launcher_pid']}) is gone without stopping its gang" in text
               for text in ev["guard_logs"]), ev["guard_logs"]
    assert "recovery_error" not in ev, ev["recovery_error"]
    new = ev["new"]
    # ... so they were all gone before the first process of the new gang started
    assert rec.t_gone <= new["time"] and not set(new["pids"]) & set(old["pids"])
    assert new["launcher_pid"] != old["launcher_pid"]
    after = [t for t in ev["task_runs"] if t["start_time"] and _started_after(t, ev["t_retry"])]
    prepared = [t for t in after if t["name"].startswith("prepare-dataset")]
    assert len(prepared) == 2 and all(t["state"]["name"] == "Cached" for t in prepared), prepared
    assert rec.resume_step >= LONG_LORA_SAVE and rec.resume_step % LONG_LORA_SAVE == 0  # from a LoRA checkpoint
    assert any(f"resuming at step {rec.resume_step} from" in m for m in _messages(ev))
    assert rec.t_first > new["time"]  # and trained on


def _started_after(task_run: dict, t: float) -> bool:
    return _ts(task_run["start_time"]) > t - 1.0


_DISK_FULL = re.compile(r"DiskFullError: (?:not enough space to write|disk full while writing) checkpoint "
                        r"(?P<file>mindformers_rank_(?P<rank>\d+)-1_(?P<step>\d+)\.ckpt) at (?P<where>\S+?): "
                        r"needs (?:about )?(?P<needed>[\d.]+) MB, (?P<free>[\d.]+) MB free")


def _disk_full_result(scenarios) -> dict:
    ev = _result(scenarios, "disk_full")
    if "skipped" in ev:
        print(ev["skipped"])
        pytest.skip(ev["skipped"])
    return ev


def test_disk_full_keeps_the_previous_checkpoint_and_names_the_space_needed(scenarios):
    ev = _disk_full_result(scenarios)
    run = ev["run"]
    assert ev["state_at_mount"] in ("SCHEDULED", "PENDING"), ev["state_at_mount"]  # mounted before the flow ran
    failures = [f for f in ev["verdicts"] if f["stage"] == "train"]
    assert failures and failures[0]["class"] == "disk_full" and failures[0]["retryable"], failures
    m = _DISK_FULL.search(failures[0]["message"])
    assert m and int(m["step"]) == 2 * SAVE, failures[0]["message"]
    rank = int(m["rank"])
    folder = f"{run.id}/train/checkpoint/rank_{rank}"
    assert m["where"].endswith((folder, f"{folder}/{m['file']}")), m["where"]  # the path ...
    size = ev["sizes_after_failure"][f"checkpoint/rank_{rank}/mindformers_rank_{rank}-1_{SAVE}.ckpt"]
    assert abs(float(m["needed"]) - size / 1e6) <= 0.1, (m["needed"], size)  # ... and the space it needs
    assert float(m["free"]) < float(m["needed"])
    assert ev["records"][rank]["exception_type"].endswith("DiskFullError"), ev["records"]
    files = ev["files_after_failure"]
    for r in range(NPROC):  # the previous checkpoint intact on every rank, nothing of step 8
        assert ev["verified_after_failure"][f"checkpoint/rank_{r}/mindformers_rank_{r}-1_{SAVE}.ckpt"] == []
    assert not [f for f in files if f"_{2 * SAVE}." in f], files
    assert not [f for f in files if _HIDDEN_TEMPORARY.match(Path(f).name)], files  # no temporary at all
    assert ev["new"] and len(ev["new"]["pids"]) == NPROC + 1  # retried


def test_disk_full_retry_completes(scenarios):
    """Space freed (the filler deleted) once the failed gang is gone: the retry's ranks resume from the step-4
    checkpoint verified on every rank and the retried stage completes."""
    ev = _disk_full_result(scenarios)
    assert "recovery_error" not in ev, (ev["recovery_error"], ev["attempt1_log_tails"])
    assert ev["resume_steps"] == {r: SAVE for r in range(NPROC)}, ev["resume_steps"]
    assert ev.get("train_completed"), ev["final"]["state"]


def test_user_error_fails_fast_without_retry(scenarios):
    ev = _result(scenarios, "user_error")
    rec = ev["recovery"]
    assert ev["final"]["state"]["type"] == "FAILED"
    failures = ev["verdicts"]
    assert len(failures) == 1 and failures[0]["class"] == "user_error" and not failures[0]["retryable"], failures
    # what is wrong and where, in every rank's forwarded output (the CLI prints it and exits 2)
    for r in range(NPROC):
        assert any(m.startswith(f"[rank {r}] error: invalid configuration in Trainer") and
                   "too few for one step of batch_size 4096" in m for m in _messages(ev)), r
    launches = [t for t in ev["task_runs"] if "launch-ranks" in t["tags"]]
    assert [t["run_count"] for t in launches] == [1]  # not retried
    assert ev["attempt_dirs"] == []
    assert any(row["failure_class"] == "user_error" for row in ev["rank_table"]), ev["rank_table"]
    assert rec.t_detect - rec.t_fault < 60, rec.to_dict()  # fails fast (start-up of the ranks included)
