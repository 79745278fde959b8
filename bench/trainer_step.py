"""Benchmark: the Trainer's steady training step against a bare MindSpore train step, same net and batch.

Run: .venv/bin/python bench/trainer_step.py [--preset gpt2_small_cpu --batch 8 --steps 40]
     .venv/bin/python bench/trainer_step.py --preset gpt2 --batch 2 --steps 4 --warmup 2   (124M, slow)

In one process: (1) a bare GRAPH-mode train step (nn.TrainOneStepCell over GPT2WithLoss with the
same AdamWeightDecay and schedule the Trainer builds) called in a tight loop on one fixed batch; (2) `Trainer.train()` on the prepared demo corpus with the same preset, batch and
optimizer.  Both are timed over the same steps after the same warm-up (compile excluded), syncing
every `--sync` steps; each figure is the median over those windows, which keeps a burst of load from
another process out of it.  Prints the steady step times, their ratio (goal <= 1.03) and tokens/s.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_dataset  # noqa: E402

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402


def bare_step_time(cfg, batch, warmup, steps, sync, lr):
    """The same compiled step the Trainer uses (same optimizer and schedule), in a tight loop on one batch."""
    from mftasks import TrainingArguments
    from mftasks.model import GPT2LMHeadModel, GPT2WithLoss
    from mftasks.optim import build_optimizer, lr_schedule, train_step_cells

    ms.set_seed(0)
    net = GPT2LMHeadModel(cfg)
    targs = TrainingArguments(learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0)
    opt = build_optimizer(net.trainable_params(), targs, lr_schedule(targs, warmup + steps))
    step, _ = train_step_cells(GPT2WithLoss(net), opt, targs.max_grad_norm, 1)
    step.set_train(True)
    rng = np.random.default_rng(0)
    ids = ms.Tensor(rng.integers(0, cfg.vocab_size, (batch, cfg.seq_length + 1)).astype(np.int32))
    mask = ms.Tensor(np.ones((batch, cfg.seq_length + 1), np.int32))
    for _ in range(warmup):
        step(ids, mask).asnumpy()
    windows, t = [], time.perf_counter()
    for i in range(steps):
        loss = step(ids, mask)
        if (i + 1) % sync == 0:
            loss.asnumpy()
            now = time.perf_counter()
            windows.append((now - t) / sync)
            t = now
    return float(np.median(windows))


def trainer_step_time(preset, dataset, batch, warmup, steps, sync, lr, workdir):
    from mftasks import Trainer, TrainingArguments

    out = Path(workdir) / "trainer"
    args = TrainingArguments(output_dir=str(out), batch_size=batch, learning_rate=lr, lr_scheduler_type="constant",
                             max_steps=warmup + steps, save_steps=10**9, logging_steps=sync, max_grad_norm=0.0,
                             overwrite_output_dir=True)
    t = Trainer(model={"model_type": preset}, args=args, train_dataset=str(dataset))
    # Time the loop from the metrics it writes: wall time of the first synced step after warm-up to the last.
    t.train()
    lines = [json.loads(l) for l in (out / "log" / "rank_0" / "metrics.jsonl").read_text().splitlines()]
    walls = sorted((l["step"], l["wall_time"]) for l in lines if l["step"] >= warmup)
    windows = [(w1 - w0) / (s1 - s0) for (s0, w0), (s1, w1) in zip(walls, walls[1:])]
    return float(np.median(windows)), t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2_small_cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sync", type=int, default=5)
    args = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from mftasks.data import read_manifest
    from mftasks.model import GPT2Config

    seq = GPT2Config.from_name(args.preset, vocab_size=100).seq_length
    dataset = demo_dataset(seq)
    vocab = read_manifest(dataset)["tokenizer"]["vocab_size"]
    cfg = GPT2Config.from_name(args.preset, vocab_size=vocab)
    work = tempfile.mkdtemp(prefix="bench-trainer-")
    try:
        bare = bare_step_time(cfg, args.batch, args.warmup, args.steps, args.sync, 1e-4)
        trainer, _ = trainer_step_time(args.preset, dataset, args.batch, args.warmup, args.steps, args.sync, 1e-4,
                                       work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tokens = args.batch * cfg.seq_length
    print(f"preset {args.preset}: batch {args.batch} x seq {cfg.seq_length}, vocab {vocab}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"bare train step:       {bare * 1000:.1f} ms/step ({tokens / bare:,.0f} tokens/s)")
    print(f"Trainer.train():       {trainer * 1000:.1f} ms/step ({tokens / trainer:,.0f} tokens/s)")
    print(f"ratio Trainer / bare = {trainer / bare:.3f} (goal <= 1.03)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
