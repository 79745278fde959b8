"""Benchmark: finetune-gpt2 through its Prefect deployment against the same stages through the CLI.

Run: .venv/bin/python bench/orchestration.py [--steps 20]
In one run, on the same tiny corpus and preset (gpt2_tiny):
  A. the stages as a user would chain them by hand: `mftasks data prepare` x2, `mftasks run` train,
     `mftasks ckpt merge`, `mftasks run` finetune (LoRA), `mftasks ckpt merge-lora`, `mftasks run` eval x3,
     `mftasks run` predict (one process each);
  B. `finetune-gpt2` through a real local server + worker + deployment run (the same stages as gang
     launches with retries, caching, artifacts and logs).
Prints both wall times, B's worker pickup (Scheduled -> Running) and the ratio (B - pickup) / A
(goal <= 1.10).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_v", "3")

from flows import stack as st  # noqa: E402
from mftasks.data import demo_corpus  # noqa: E402


def cli(*args, cwd=REPO):
    r = subprocess.run([sys.executable, "-m", "mftasks.cli", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, env=dict(os.environ, GLOG_v="3"))
    if r.returncode != 0:
        raise SystemExit(f"mftasks {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def by_hand(root: Path, corpus: Path, steps: int) -> float:
    t = time.perf_counter()
    pre, fin = root / "pre", root / "fin"
    cli("data", "prepare", "--input", corpus / "pretrain", "--pattern", "*.jsonl", "--output", pre, "--vocab-size",
        300, "--seq-length", 64, "--workers", 2)
    cli("data", "prepare", "--input", corpus / "finetune", "--pattern", "*.jsonl", "--output", fin, "--tokenizer",
        pre / "tokenizer.model", "--seq-length", 64, "--workers", 2)
    cfg = REPO / "configs" / "gpt2" / "run_gpt2_tiny.yaml"
    common = ["run", "--config", cfg, "--model_type", "gpt2_tiny"]
    # run_gpt2_tiny.yaml trains max_steps 4; the pipeline's step count is set the same way below
    cli(*common, "--run_mode", "train", "--train_dataset", pre, "--output_dir", root / "train")
    cli("ckpt", "merge", root / "train", "--output", root / "base.ckpt")
    cli(*common, "--run_mode", "finetune", "--pet_method", "lora", "--train_dataset", fin, "--output_dir",
        root / "lora", "--load_checkpoint", root / "base.ckpt")
    adapter = sorted((root / "lora" / "checkpoint" / "rank_0").glob("*.ckpt"))[-1]
    cli("ckpt", "merge-lora", "--base", root / "base.ckpt", "--adapter", adapter, "--output", root / "merged.ckpt")
    for ckpt, data in ((root / "base.ckpt", pre), (root / "base.ckpt", fin), (root / "merged.ckpt", fin)):
        cli(*common, "--run_mode", "eval", "--eval_dataset", data, "--load_checkpoint", ckpt, "--output_dir",
            root / "eval")
    cli(*common, "--run_mode", "predict", "--predict_data", "Question: What is 2 plus 2?\nAnswer:",
        "--load_checkpoint", root / "merged.ckpt", "--output_dir", root / "predict")
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_deployment(rel: Path) -> tuple[float, float]:
    home = Path(tempfile.mkdtemp(prefix="bench-orch-home-"))
    os.environ.update({"MFTASKS_PREFECT_HOME": str(home), "MFTASKS_PREFECT_PORT": str(free_port()),
                       "MFTASKS_PROJECT": str(REPO)})
    stack = st.Stack.from_env()
    try:
        st.start_server(stack)
        st.start_worker(stack)
        st.deploy(stack)
        params = {"corpus_dir": str(rel / "corpus"), "work_dir": str(rel / "pipeline"), "model_type": "gpt2_tiny",
                  "vocab_size": 300, "train_steps": 4, "finetune_steps": 4, "batch_size": 2, "predict_count": 1,
                  "master_port": free_port()}
        t = time.perf_counter()
        run = st.run_deployment(stack, "finetune-gpt2", params)
        final = st.watch(stack, run["id"], timeout=1800)
        total = time.perf_counter() - t
        if final["state"]["type"] != "COMPLETED":
            raise SystemExit(f"deployment run ended {final['state']['name']}")
        start = dt.datetime.fromisoformat(final["start_time"].replace("Z", "+00:00"))
        created = dt.datetime.fromisoformat(final["created"].replace("Z", "+00:00"))
        with stack.client() as c:
            runs = c.request("POST", "/task_runs/filter",
                             json={"task_runs": {"flow_run_id": {"any_": [run["id"]]}}}).json()
        stamp = lambda v: dt.datetime.fromisoformat(v.replace("Z", "+00:00"))  # noqa: E731
        spans = sorted((stamp(r["start_time"]), stamp(r["end_time"]), r["name"]) for r in runs
                       if r.get("start_time") and r.get("end_time"))
        print("task runs of the deployment run (seconds from flow start):")
        for s0, s1, name in spans:
            print(f"  {(s0 - start).total_seconds():6.1f} {(s1 - s0).total_seconds():6.1f}s  {name}")
        return total, (start - created).total_seconds()
    finally:
        st.stop_workers(stack)
        st.stop_server(stack)
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    rel = Path("build") / f"bench-orch-{uuid.uuid4().hex[:8]}"
    root = REPO / rel
    try:
        demo_corpus.build(root / "corpus", max_bytes=150_000, qa_pairs=2500, checks=8)
        a = by_hand(root / "byhand", root / "corpus", 4)
        b, pickup = through_deployment(rel)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"A. stages by hand through the CLI: {a:.1f}s")
    print(f"B. finetune-gpt2 deployment run:   {b:.1f}s (worker pickup {pickup:.1f}s)")
    print(f"ratio (B - pickup) / A = {(b - pickup) / a:.2f} (goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
