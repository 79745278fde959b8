"""End to end through a real Prefect server and worker: deploy, run finetune-gpt2, check what it wrote."""
from __future__ import annotations

import json

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows import stack as st
from mftasks.errors import ConfigError

from conftest import REPO, FlowRun, finetune_gpt2_completes

pytestmark = pytest.mark.slow


def test_finetune_gpt2_deployment_runs_to_completion(local_stack, finished_pipeline):
    run, summary = finished_pipeline
    m = summary["metrics"]
    assert m["finetune_merged_PPL"] < m["finetune_base_PPL"]  # the finetune worked on its domain
    assert len(summary["predictions"]) == 2
    artifacts = httpx.post(f"{local_stack.api_url}/artifacts/filter",
                           json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=10).json()
    keys = {a["key"] for a in artifacts}
    assert {"eval-metrics", "loss-curve", "loss-table", "lineage", "ranks-train", "ranks-lora",
            "predictions"} <= keys
    logs = httpx.post(f"{local_stack.api_url}/logs/filter",
                      json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}, timeout=10).json()
    assert any(l["message"].startswith("[rank 0]") for l in logs)  # rank output forwarded with its prefix
    launches = {t["name"]: t["tags"] for t in FlowRun(local_stack, run["id"]).task_runs() if "launch-ranks" in t["tags"]}
    assert set(launches) == {"train", "lora", "eval-pretrain-base", "eval-finetune-base", "eval-finetune-merged",
                             "predict"}  # task runs read as the pipeline does
    assert all(f"stage:{name}" in tags for name, tags in launches.items()), launches


def test_second_run_reuses_cached_data_preparation(local_stack, work_dir):
    run = finetune_gpt2_completes(local_stack, work_dir)
    task_runs = httpx.post(f"{local_stack.api_url}/task_runs/filter",
                           json={"task_runs": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=10).json()
    prepare = [t for t in task_runs if t["name"].startswith("prepare-dataset")]
    assert prepare and all(t["state"]["name"] == "Cached" for t in prepare)


def test_bad_parameters_rejected_before_any_run(local_stack):
    with pytest.raises(ConfigError) as err:
        st.run_deployment(local_stack, "finetune-gpt2", {"nproc": 0, "work_dir": "../../etc", "bogus": 1,
                                                         "corpus_dir": "x;rm -rf /"})
    msg = str(err.value)
    assert "4 problems" in msg and "nproc" in msg and "work_dir" in msg and "'bogus'" in msg and "corpus_dir" in msg


def test_a_device_the_machine_lacks_fails_the_run_before_anything_starts(local_stack):
    work = Path("build") / f"ascend-{uuid.uuid4().hex[:8]}"
    run = st.run_deployment(local_stack, "finetune-gpt2", {"corpus_dir": str(work / "corpus"),
                                                           "work_dir": str(work / "pipeline"),
                                                           "device_target": "Ascend"})
    final = st.watch(local_stack, run["id"], timeout=300)
    assert final["state"]["type"] == "FAILED", final["state"]
    deadline = time.monotonic() + 30  # a run's last log lines reach the server shortly after its final state
    while True:
        logs = [l["message"] for l in FlowRun(local_stack, run["id"]).logs()]
        if any("device_target='Ascend': no Ascend device on this machine" in m for m in logs):
            break
        assert time.monotonic() < deadline, logs[-5:]
        time.sleep(0.5)
    assert not (REPO / work).exists()  # no corpus built, no data prepared, no rank started
    assert not [t for t in FlowRun(local_stack, run["id"]).task_runs()]


def test_deployment_names_resolve_through_the_api(local_stack):
    assert st.find_deployment(local_stack, "finetune-gpt2")["flow_name"] == "finetune-gpt2"
    assert st.find_deployment(local_stack, "finetune-gpt2/finetune-gpt2")["name"] == "finetune-gpt2"
    with pytest.raises(ConfigError, match="no deployment named 'nope'.*finetune-gpt2/finetune-gpt2"):
        st.find_deployment(local_stack, "nope")
    flow = httpx.post(f"{local_stack.api_url}/flows/", json={"name": "other-flow"}, timeout=10).json()
    other = httpx.post(f"{local_stack.api_url}/deployments/", json={"name": "finetune-gpt2", "flow_id": flow["id"]},
                       timeout=10)
    other.raise_for_status()
    try:
        with pytest.raises(ConfigError, match="ambiguous: finetune-gpt2/finetune-gpt2, other-flow/finetune-gpt2"):
            st.find_deployment(local_stack, "finetune-gpt2")
    finally:  # the stack is shared by the session: leave only the project's deployments behind
        httpx.delete(f"{local_stack.api_url}/deployments/{other.json()['id']}", timeout=10).raise_for_status()


def test_nightly_schedule_is_deployed(local_stack):
    dep = st.find_deployment(local_stack, "nightly-eval")
    schedules = httpx.get(f"{local_stack.api_url}/deployments/{dep['id']}/schedules", timeout=10).json()
    assert schedules and schedules[0]["schedule"]["cron"] == "0 2 * * *"
    assert schedules[0]["schedule"]["timezone"] == "Asia/Shanghai"


def test_cli_deployment_run_watch(local_stack, work_dir):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "flows.cli", "deployment", "run", "prepare-data", "-p",
                        f"corpus_dir={work_dir / 'corpus'}", "-p", f"work_dir={work_dir / 'pipeline'}", "-p",
                        "model_type=gpt2_tiny", "-p", "vocab_size=300", "--watch"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "created flow run" in r.stdout and "state: Completed" in r.stdout


def test_nightly_eval_compares_with_previous_night_and_baseline(local_stack, finished_pipeline, work_dir):
    params = {"work_dir": str(work_dir / "pipeline"), "max_regression": 0.05}
    first = st.watch(local_stack, st.run_deployment(local_stack, "nightly-eval", params)["id"], timeout=600)
    assert first["state"]["type"] == "COMPLETED", first["state"]
    nightly = REPO / work_dir / "pipeline" / "nightly"
    baseline = json.loads((nightly / "baseline.json").read_text())
    assert set(baseline) == {"finetune-s64-v300_PPL", "pretrain-s64-v300_PPL"}
    second = st.watch(local_stack, st.run_deployment(local_stack, "nightly-eval", params)["id"], timeout=600)
    assert second["state"]["type"] == "COMPLETED"  # same model, same numbers: no regression
    # A baseline 20% better than today's model: tonight's numbers are a regression past 5%.
    (nightly / "baseline.json").write_text(json.dumps({k: v * 0.8 for k, v in baseline.items()}))
    third = st.watch(local_stack, st.run_deployment(local_stack, "nightly-eval", params)["id"], timeout=600)
    assert third["state"]["type"] == "FAILED"
    assert "worse than the baseline" in third["state"]["message"]


def test_watch_waits_out_a_transient_crashed_state(local_stack):
    """Prefect's runner and worker both report a killed flow-run process, seconds apart; after
    `prefect flow-run retry` the late report flips the retried run to Crashed for a moment. `watch` must
    follow it to its real end, and still report a run that stays Crashed."""
    import threading
    import time

    with local_stack.client() as c:
        flow = c.request("POST", "/flows/", json={"name": "watch-settle-test"}).json()

        def new_run():
            body = {"flow_id": flow["id"], "state": {"type": "RUNNING"}}
            return c.request("POST", "/flow_runs/", json=body).json()["id"]

        def set_state(run_id, type_):
            r = c.request("POST", f"/flow_runs/{run_id}/set_state", json={"state": {"type": type_}, "force": True})
            assert r.status_code < 300, r.text

        flapping, stuck = new_run(), new_run()
        set_state(flapping, "CRASHED")
        set_state(stuck, "CRASHED")
    seen = []
    failures = []  # what went wrong in the thread, re-raised here (pytest only warns about a thread's errors)

    def recover():
        try:
            time.sleep(1.5)
            with local_stack.client() as c2:
                r = c2.request("POST", f"/flow_runs/{flapping}/set_state",
                               json={"state": {"type": "RUNNING"}, "force": True})
                assert r.status_code < 300, r.text
                time.sleep(1.5)
                r = c2.request("POST", f"/flow_runs/{flapping}/set_state",
                               json={"state": {"type": "COMPLETED"}, "force": True})
                assert r.status_code < 300, r.text
        except BaseException as exc:  # noqa: BLE001 - handed to the test's own thread
            failures.append(exc)

    t = threading.Thread(target=recover)
    t.start()
    try:
        final = st.watch(local_stack, flapping, timeout=60, on_state=seen.append, crash_settle=5.0)
    finally:
        t.join()
        if failures:  # the thread's failure is the cause (also of a watch that then timed out)
            raise failures[0]
    assert final["state"]["type"] == "COMPLETED" and seen[0] == "Crashed" and seen[-1] == "Completed", seen
    t0 = time.monotonic()
    final = st.watch(local_stack, stuck, timeout=60, crash_settle=2.0)
    assert final["state"]["type"] == "CRASHED" and 2.0 <= time.monotonic() - t0 < 10
