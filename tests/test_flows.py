"""The Prefect layer under a test harness: tasks via .fn(), caching by dataset_id, retries, concurrency."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from flows import tasks
from mftasks.data import plan, PrepareSpec
from mftasks.errors import ConfigError
from mftasks.stage import StageFailed, StageSpec


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _spec(corpus_dir, out, **kw):
    base = {"inputs": [str(corpus_dir)], "output": str(out), "vocab_size": 300, "seq_length": 32}
    base.update(kw)
    return base


def test_dataset_cache_key_is_the_dataset_id(tmp_path, corpus_dir):
    spec = _spec(corpus_dir, tmp_path / "ds")
    key = tasks._dataset_key(None, {"spec": spec})
    assert key.startswith("dataset-" + plan(PrepareSpec(**spec)) + "-")
    other = tasks._dataset_key(None, {"spec": _spec(corpus_dir, tmp_path / "ds", seq_length=48)})
    elsewhere = tasks._dataset_key(None, {"spec": _spec(corpus_dir, tmp_path / "elsewhere")})
    assert len({key, other, elsewhere}) == 3


def test_prepare_dataset_fn_runs_the_library(tmp_path, corpus_dir):
    out = tasks.prepare_dataset.fn(_spec(corpus_dir, tmp_path / "ds"))
    assert Path(out["output"], "manifest.json").is_file() and out["train_samples"] > 0


def test_prepare_is_cached_across_flow_runs(tmp_path, corpus_dir):
    spec = _spec(corpus_dir, tmp_path / "cached")

    @flow
    def twice():
        first = tasks.prepare_dataset(spec, return_state=True)
        second = tasks.prepare_dataset(spec, return_state=True)
        return first.name, second.name

    assert twice() == ("Completed", "Cached")
    assert twice() == ("Cached", "Cached")  # a new flow run: still cached by dataset_id


def test_deleted_dataset_is_prepared_again(tmp_path, corpus_dir):
    import shutil

    spec = _spec(corpus_dir, tmp_path / "gone")

    @flow
    def once():
        return tasks.prepared(spec)

    out = once()
    shutil.rmtree(out["output"])
    again = once()  # the cache says done, the folder is gone: refreshed
    assert Path(again["output"], "manifest.json").is_file()


def test_rank_table_task_validates_and_writes(tmp_path):
    @flow
    def f():
        return tasks.generate_rank_table(2, str(tmp_path / "rt.json"))

    out = f()
    from mftasks import ranktable

    table = ranktable.load(out["path"])
    assert out["world_size"] == 2 and ranktable.world_size(table) == 2


class _FakeResult:
    def __init__(self, retryable):
        self.retryable = retryable

    def summary(self):
        return "fake"


def test_retry_condition_follows_the_failure_class():
    from prefect.states import Failed

    def state_of(exc):
        return Failed(data=exc)

    assert tasks.retry_if_retryable(None, None, state_of(StageFailed("train", _FakeResult(True)))) is True
    assert tasks.retry_if_retryable(None, None, state_of(StageFailed("train", _FakeResult(False)))) is False
    assert tasks.retry_if_retryable(None, None, state_of(ConfigError("bad"))) is False
    from types import SimpleNamespace

    from mftasks.mfjob import JobFailed  # a MindFormers job's failure follows its class the same way
    assert tasks.retry_if_retryable(None, None, state_of(JobFailed(SimpleNamespace(launch=_FakeResult(True))))) is True
    assert tasks.retry_if_retryable(None, None, state_of(JobFailed(SimpleNamespace(launch=_FakeResult(False))))) is False


def test_a_failed_launch_publishes_its_verdict_as_a_table(monkeypatch, tmp_path):
    """What the fault tests read instead of the log line: one row per failed attempt under `verdict-<stage>`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from mftasks.launcher.result import FailureClass, RankFailure

    cause = RankFailure(FailureClass.KILLED, rank=1, signal="SIGKILL", message="was killed by SIGKILL",
                        elapsed=3.2109, ranks=(1,))

    class Result(_FakeResult):
        root_cause, failure_class = cause, cause.failure_class

        def rank_rows(self):
            return [{"rank": 1, "failure_class": "killed"}]

    def failing(spec, work_dir, attempt=0, on_line=None):
        raise StageFailed(spec.name, Result(True))

    monkeypatch.setattr(tasks, "run_stage", failing)

    @flow
    def one_stage():
        tasks.launch_ranks.fn(StageSpec(name="eval_before", run_mode="eval", output_dir=str(tmp_path)), str(tmp_path))

    with pytest.raises(StageFailed):
        one_stage()
    with get_client(sync_client=True) as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["verdict-eval-before"])))
    assert [a.type for a in found] == ["table"]
    assert json.loads(found[0].data) == [{
        "stage": "eval_before", "class": "killed", "retryable": True, "who": "rank 1",
        "what": "rank 1 was killed by SIGKILL", "elapsed_s": 3.211, "attempt": 0,
        "message": "rank 1 was killed by SIGKILL after 3.21 s [killed, retryable]"}]


def test_launch_takes_one_device_slot_per_rank(monkeypatch, tmp_path):
    """Two 2-rank launches on a node with 3 devices cannot overlap; with 4 they can."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    intervals = []

    def fake_run_stage(spec, work_dir, attempt=0, on_line=None):
        start = time.monotonic()
        time.sleep(2.0)
        intervals.append((start, time.monotonic()))
        from mftasks.stage import StageResult

        return StageResult(spec.name, {}, [], attempt, "", 2.0)

    monkeypatch.setattr(tasks, "run_stage", fake_run_stage)

    def overlapped(devices, node):
        monkeypatch.setenv("MFTASKS_NODE", node)
        with get_client(sync_client=True) as c:
            c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"devices-{node}", limit=devices))
        intervals.clear()
        spec = StageSpec(name="x", run_mode="eval", output_dir=str(tmp_path), nproc=2)

        def one():  # the task's body (its concurrency block included), without flow-run start-up delays
            return tasks.launch_ranks.fn(spec, str(tmp_path))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (a0, a1), (b0, b1) = sorted(intervals)
        return b0 < a1

    assert overlapped(3, "node-three") is False
    assert overlapped(4, "node-four") is True


def test_mindformers_job_paths_never_read_as_options():
    """Each path of mindformers-job becomes an argv element after one of run_mindformer.py's flags."""
    from pydantic import TypeAdapter, ValidationError

    from flows.mindformers import EnvPath, JobPath

    assert TypeAdapter(JobPath).validate_python("jobs/llama.yaml") == "jobs/llama.yaml"
    assert TypeAdapter(EnvPath).validate_python(".venv-mindformers/bin/python")
    for bad in ("--resume_training", "jobs/-x", "../etc/x", "/etc/x", "a b"):
        with pytest.raises(ValidationError):
            TypeAdapter(JobPath).validate_python(bad)
    with pytest.raises(ValidationError):
        TypeAdapter(EnvPath).validate_python("-c")
