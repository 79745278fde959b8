"""Shared fixtures: a small deterministic corpus and one prepared dataset reused across tests."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402

from mftasks.data import PrepareSpec, demo_corpus, prepare  # noqa: E402

# As MindFormers' scripts do (`ms.set_context(mode=0)`): GRAPH mode, the fast path, on CPU.
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

TINY_SEQ = 64  # the gpt2_tiny preset's context length


def pytest_collection_modifyitems(config, items):
    """Everything under tests/faults/ is also marked `faults` (run by `make test-faults`)."""
    for item in items:
        if "/tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.slow)


def write_corpus(folder: Path, max_bytes: int = 120_000) -> Path:
    """A folder of text files (paragraph documents) plus a nested folder and a markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = list(demo_corpus.stdlib_docstrings(max_bytes))
    third = len(docs) // 3
    (folder / "a.txt").write_text("\n\n".join(docs[:third]) + "\n", encoding="utf-8")
    (folder / "nested").mkdir(exist_ok=True)
    (folder / "nested" / "b.txt").write_text("\n\n".join(docs[third:2 * third]) + "\n", encoding="utf-8")
    (folder / "c.md").write_text("\n\n".join(docs[2 * third:]) + "\n", encoding="utf-8")
    return folder


def write_qa(path: Path, n: int = 1500, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q, a in demo_corpus.qa_pairs_of(seed, n):
            f.write(json.dumps({"text": f"Question: {q}\nAnswer: {a}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, corpus_dir) -> Path:
    """A prepared dataset (vocab 300, seq_length 64) shared by data, trainer and pipeline tests."""
    out = tmp_path_factory.mktemp("datasets") / "pretrain"
    prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=TINY_SEQ,
                        eval_fraction=0.1))
    return out


@pytest.fixture(scope="session")
def tiny_finetune_dataset(tmp_path_factory, tiny_dataset) -> Path:
    """Question/answer data tokenized with the pretraining tokenizer."""
    root = tmp_path_factory.mktemp("finetune")
    qa = write_qa(root / "qa.jsonl")
    out = root / "dataset"
    prepare(PrepareSpec(inputs=[str(qa)], output=str(out), tokenizer=str(tiny_dataset / "tokenizer.model"),
                        seq_length=TINY_SEQ, eval_fraction=0.1))
    return out


def train_base_and_adapter(out: Path, dataset: Path, finetune_dataset: Path) -> Path:
    """Into `out`: a 2-step gpt2_tiny train run (checkpoint at step 2) and a 1-step LoRA adapter on it, rank 0."""
    from mftasks import Trainer, TrainingArguments

    model = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}
    args = dict(output_dir=str(out), batch_size=4, max_steps=2, save_steps=2, seed=7)
    Trainer(model=model, args=TrainingArguments(**args), train_dataset=dataset).train()
    Trainer(model=model, pet_method="lora", args=TrainingArguments(**dict(args, max_steps=1, save_steps=1)),
            train_dataset=finetune_dataset).finetune()
    return out


def small_pretrain(root: Path, corpus_dir: Path, tokenizer: Path, approx_samples: int) -> Path:
    """A pretraining set of roughly `approx_samples` train samples of 65 tokens (for runs of ~N steps)."""
    text = (corpus_dir / "a.txt").read_text(encoding="utf-8")
    src = root / "small.txt"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(text[: approx_samples * 150], encoding="utf-8")
    out = root / "small-pretrain"
    prepare(PrepareSpec(inputs=[str(src)], output=str(out), tokenizer=str(tokenizer), seq_length=TINY_SEQ,
                        eval_fraction=0.1))
    return out


# ---------------------------------------------------------------------------------------------- Prefect stack
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def environ(**values: str | None):
    """Set (or, with None, remove) environment variables for the block; restore them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class FlowRun:
    """One flow run, read as an operator would, through Prefect's client (as JSON, as the API sends it)."""

    stack: Any
    """The flows.stack.Stack it runs on."""
    id: str

    def read(self) -> dict:
        with self.stack.client() as c:
            return c.read_flow_run(UUID(self.id)).model_dump(mode="json")

    def state(self) -> str:
        return (self.read().get("state") or {}).get("type", "")

    def wait(self, timeout: float = 600.0) -> dict:
        from flows import stack as st

        return st.watch(self.stack, self.id, timeout=timeout)

    def states(self) -> list[dict]:
        """Every state the run went through, oldest first."""
        with self.stack.client() as c:
            rows = [s.model_dump(mode="json") for s in c.read_flow_run_states(UUID(self.id))]
        return sorted(rows, key=lambda s: s["timestamp"])

    def task_runs(self) -> list[dict]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
        from prefect.client.schemas.sorting import TaskRunSort

        with self.stack.client() as c:
            runs = c.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[self.id])),
                                    sort=TaskRunSort.EXPECTED_START_TIME_ASC)
        return [t.model_dump(mode="json") for t in runs]

    def logs(self) -> list[dict]:
        """Every log record of the run, oldest first."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        rows: list[dict] = []
        with self.stack.client() as c:
            while True:
                page = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[self.id])),
                                   sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(rows))
                rows += [r.model_dump(mode="json") for r in page]
                if len(page) < 200:
                    return rows

    def artifacts(self, key: str) -> list[dict]:
        """The run's artifacts under `key` (every version), oldest first, their data parsed (a table: its rows)."""
        from prefect.client.schemas.filters import ArtifactFilterKey

        return self._artifacts(ArtifactFilterKey(any_=[key]))

    def _artifacts(self, key) -> list[dict]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with self.stack.client() as c:
            found = c.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[self.id]), key=key))
        rows = sorted((a.model_dump(mode="json") for a in found), key=lambda a: a["created"])
        return [{**a, "data": json.loads(a["data"]) if isinstance(a["data"], str) else a["data"]} for a in rows]

MF_PYTHON = REPO / ".venv-mindformers" / "bin" / "python"
"""The interpreter of MindFormers' own environment (mindformers 1.9.0 pins MindSpore 2.9), built by `make test`."""


def mindformers_python() -> str:
    """MF_PYTHON, or the test fails saying how to build it."""
    if not MF_PYTHON.exists():
        pytest.fail(f"MindFormers' environment {MF_PYTHON.parent.parent} is missing: `make test` builds it "
                    "(or `make mindformers-env`)")
    return str(MF_PYTHON)


def write_mindformers_job(root: Path, samples: int, save_steps: int) -> dict[str, Path]:
    """Inputs of the tiny-Llama MindFormers job (tests/fixtures/mindformers_llama): `samples` rows of token ids
    (seq_length 32 + 1) in train.npy, 16 rows of 32 in eval.npy, job.yaml and lora.yaml (pet_method: lora)."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    ids = np.random.default_rng(0).integers(0, 128, (samples, 33)).astype(np.int32)
    np.save(root / "train.npy", ids)
    np.save(root / "eval.npy", ids[:16, :32])
    body = ("model: {seq_length: 32, hidden_size: 64, num_layers: 2, num_heads: 4, vocab_size: 128, "
            "intermediate_size: 128}\n"
            f"runner: {{batch_size: 4, epochs: 1, save_steps: {save_steps}, learning_rate: 0.001}}\n")
    (root / "job.yaml").write_text("seed: 1\n" + body)
    (root / "lora.yaml").write_text("seed: 1\npet_method: lora\n" + body)
    return {"root": root, "train": root / "train.npy", "eval": root / "eval.npy", "yaml": root / "job.yaml",
            "lora_yaml": root / "lora.yaml"}

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_stack(home: Path, workers=({},), deploy: bool = True, **env: str | None):
    """A real Prefect server (PREFECT_HOME `home`, a free port, `env` set for the block) with a worker per
    `workers` entry (keyword arguments of `stack.start_worker`) and, with `deploy`, every deployment;
    everything stopped and the environment restored at the end."""
    from flows import stack as st

    with environ(MFTASKS_PREFECT_HOME=str(home), MFTASKS_PREFECT_PORT=str(free_port()), MFTASKS_PROJECT=str(REPO),
                 **env):
        stack = st.Stack.from_env()
        try:
            st.start_server(stack)
            for kwargs in workers:
                st.start_worker(stack, **kwargs)
            if deploy:
                st.deploy(stack)
            yield stack
        finally:
            st.stop_workers(stack)
            st.stop_server(stack)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """A real Prefect server (own PREFECT_HOME, free port) with one worker and every deployment; shared by
    the end-to-end and UI tests, stopped at the end of the session."""
    with running_stack(tmp_path_factory.mktemp("prefect-home")) as stack:
        yield stack


@contextlib.contextmanager
def demo_work(prefix: str, keep: bool = False):
    """A fresh work folder build/<prefix>-XXXXXXXX (git-ignored) holding the demo corpus in corpus/, as a
    project-relative path (deployment parameters are project-relative paths); removed at the end unless `keep`."""
    import shutil
    import uuid

    rel = Path("build") / f"{prefix}-{uuid.uuid4().hex[:8]}"
    demo_corpus.build(REPO / rel / "corpus", max_bytes=150_000, qa_pairs=2500, checks=8)
    try:
        yield rel
    finally:
        if not keep:
            shutil.rmtree(REPO / rel, ignore_errors=True)


@pytest.fixture(scope="session")
def work_dir():
    """One work folder inside build/ for the end-to-end runs (see demo_work)."""
    with demo_work("e2e") as rel:
        yield rel


def finetune_gpt2_completes(stack, work: Path, timeout: float = 900, **params) -> dict:
    """Run the finetune-gpt2 deployment (gpt2_tiny; corpus in WORK/corpus, pipeline in WORK/pipeline, 4 steps
    a stage unless `params` say otherwise), assert it COMPLETED, and return the flow run."""
    from flows import stack as st

    params = {"corpus_dir": str(work / "corpus"), "work_dir": str(work / "pipeline"), "model_type": "gpt2_tiny",
              "vocab_size": 300, "train_steps": 4, "finetune_steps": 4, "batch_size": 4, "predict_count": 0,
              "master_port": free_port(), **params}
    run = st.run_deployment(stack, "finetune-gpt2", params)
    final = st.watch(stack, run["id"], timeout=timeout)
    assert final["state"]["type"] == "COMPLETED", final["state"]
    return run


@pytest.fixture(scope="session")
def finished_pipeline(local_stack, work_dir):
    """One completed finetune-gpt2 deployment run (gpt2_tiny): (flow run, summary)."""
    run = finetune_gpt2_completes(local_stack, work_dir, train_steps=30, finetune_steps=30, batch_size=8,
                                  predict_count=2)
    summary = json.loads((REPO / work_dir / "pipeline" / "runs" / run["id"] / "summary.json").read_text())
    return run, summary


@pytest.fixture
def small_fs(tmp_path):
    """A factory: small_fs(size_bytes) mounts a real tmpfs of that size under tmp_path and returns its path
    (the disk-full tests write into it until ENOSPC); unmounted at teardown.  Skipped, with the reason
    printed, where this process may not mount (not root, no CAP_SYS_ADMIN)."""
    import subprocess

    mounts = []

    def make(size: int, name: str = "fs") -> Path:
        point = tmp_path / name
        point.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size)}", "tmpfs", str(point)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            reason = f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()}); disk-full test skipped"
            print(reason)
            pytest.skip(reason)
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
