"""Benchmark: tokens/s of mftasks.parallel layouts against one process on the same global batch.

Run: .venv/bin/python bench/parallel.py [--steps 5 --layouts 2,1,1,1 1,2,1,1 1,1,2,2 1,1,2,4]

A GPT-2 of 4 layers x 256 wide (8 heads, seq 128, vocab 2048, dropout 0), global batch 8, on this machine:
- "1 process, Trainer step": nn.TrainOneStepCell (mftasks.optim.train_step_cells), 2 threads;
- "1 process, ParallelTrainStep": the Python-driven step on a 1x1x1 layout (its own overhead), 2 threads;
- each layout dp,mp,pp,micro: ranks started by `mftasks launch` (1 thread each), ParallelTrainStep.
Tokens/s = global batch x seq / median step time after 2 warm-up steps.  For pipeline layouts each rank
also reports the share of the step it spent waiting in a receive (pipeline bubble plus transfer), and
the ideal GPipe bubble (pp - 1) / (micro + pp - 1).  The rank program is this file (`--rank OUT SPEC`).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

GLOBAL_BATCH, SEQ, VOCAB, WARMUP = 8, 128, 2048, 2


def config():
    from mftasks.model.config import GPT2Config

    return GPT2Config(name="custom", n_layer=4, n_embd=256, n_head=8, seq_length=SEQ, vocab_size=VOCAB,
                      dropout=0.0, attention_dropout=0.0)


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(step).integers(0, VOCAB, (GLOBAL_BATCH, SEQ + 1)).astype(np.int32)
    return ids, np.ones_like(ids)


def args():
    from mftasks.training_args import TrainingArguments

    return TrainingArguments(learning_rate=1e-3, warmup_steps=1)


def _timed(run_step, steps: int) -> list[float]:
    times = []
    for s in range(WARMUP + steps):
        t = time.perf_counter()
        run_step(*batch(s))
        times.append(time.perf_counter() - t)
    return times[WARMUP:]


def parallel_run(spec: str, rank: int, steps: int) -> dict:
    """Time ParallelTrainStep for layout `spec` on this rank; with the time spent inside receives."""
    from mftasks.context import ParallelConfig
    from mftasks.optim import lr_schedule
    from mftasks.parallel.groups import initialize_model_parallel
    from mftasks.parallel.mappings import PipeTransfer
    from mftasks.parallel.model import build_rank_model
    from mftasks.parallel.optimizer import build_parallel_optimizer
    from mftasks.parallel.step import ParallelTrainStep

    dp, mp, pp, micro = (int(v) for v in spec.split(","))
    pc = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=micro)
    state = initialize_model_parallel(pc, rank)
    model = build_rank_model(config(), state)
    step = ParallelTrainStep(model, state, build_parallel_optimizer(model, state, args(), lr_schedule(args(), 99)),
                             1.0)
    waited = [0.0]
    recv = PipeTransfer.recv

    def timed_recv(self, shape, dtype=None):
        t = time.perf_counter()
        out = recv(self, shape) if dtype is None else recv(self, shape, dtype)
        out.asnumpy()  # the receive is done only when the sender's data is here
        waited[0] += time.perf_counter() - t
        return out

    PipeTransfer.recv = timed_recv
    rows, d = GLOBAL_BATCH // dp, state.place.dp_rank
    times = _timed(lambda ids, mask: step(ids[d * rows:(d + 1) * rows], mask[d * rows:(d + 1) * rows]), steps)
    total_waited = waited[0]  # includes warm-up steps: rescale to the timed ones
    return {"times": times, "recv_share": total_waited / (sum(times) * (WARMUP + steps) / steps) if pp > 1 else 0.0}


def single_process(steps: int) -> list[tuple[str, float]]:
    import mindspore as ms

    from mftasks.model.gpt2 import GPT2LMHeadModel, GPT2WithLoss
    from mftasks.optim import build_optimizer, lr_schedule, train_step_cells

    ms.set_context(runtime_num_threads=2)
    ms.set_seed(0)
    model = GPT2LMHeadModel(config())
    cell, _ = train_step_cells(GPT2WithLoss(model), build_optimizer(model.trainable_params(), args(),
                                                                     lr_schedule(args(), 99)), 1.0, 1)
    trainer = statistics.median(_timed(lambda i, m: cell(ms.Tensor(i), ms.Tensor(m)).asnumpy(), steps))
    python_step = statistics.median(parallel_run("1,1,1,1", 0, steps)["times"])
    return [("1 process, Trainer step", trainer), ("1 process, ParallelTrainStep", python_step)]


def launch(spec: str, steps: int, out: Path) -> dict:
    dp, mp, pp, _ = (int(v) for v in spec.split(","))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "mftasks.cli", "launch", "--nproc-per-node", str(dp * mp * pp), "--master-port",
            str(port), "--log-dir", str(out / "log"), "--", sys.executable, __file__, "--rank", str(out), spec,
            "--steps", str(steps)]
    r = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{spec} failed:\n{r.stdout[-3000:]}")
    return {int(f.stem.split("_")[1]): json.loads(f.read_text()) for f in out.glob("rank_*.json")}


def rank_main(out: str, spec: str, steps: int) -> None:
    import mindspore as ms
    from mindspore.communication import get_rank, init

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=1)
    init()
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return
    rank = get_rank()
    result = parallel_run(spec, rank, steps)
    Path(out, f"rank_{rank}.json").write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--layouts", nargs="+", default=["2,1,1,1", "1,2,1,1", "1,1,2,2", "1,1,2,4"],
                   help="dp,mp,pp,micro_batch_num")
    p.add_argument("--rank", nargs=2, metavar=("OUT", "SPEC"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rank:
        return rank_main(*a.rank, a.steps)
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    tokens = GLOBAL_BATCH * SEQ
    rows = single_process(a.steps)
    base = rows[0][1]
    print(f"GPT-2 4 x 256, seq {SEQ}, global batch {GLOBAL_BATCH}, {a.steps} timed steps, {os.cpu_count()} cores")
    print(f"{'layout':34} {'s/step':>8} {'tokens/s':>9} {'vs Trainer':>10}  recv wait / ideal bubble")
    for name, t in rows:
        print(f"{name:34} {t:8.3f} {tokens / t:9.0f} {base / t:10.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.layouts:
            ranks = launch(spec, a.steps, Path(tmp) / spec.replace(",", "_"))
            t = max(statistics.median(r["times"]) for r in ranks.values())
            dp, mp, pp, micro = (int(v) for v in spec.split(","))
            bubble = (f"{max(r['recv_share'] for r in ranks.values()):.0%} / {(pp - 1) / (micro + pp - 1):.0%}"
                      if pp > 1 else "")
            name = f"dp{dp} mp{mp} pp{pp} micro{micro} ({dp * mp * pp} ranks)"
            print(f"{name:34} {t:8.3f} {tokens / t:9.0f} {base / t:10.2f}  {bubble}", flush=True)


if __name__ == "__main__":
    main()
