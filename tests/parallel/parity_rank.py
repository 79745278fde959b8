"""A real rank for the parallel parity tests: trains a tiny GPT-2 under one or more layouts and writes,
per layout, OUT/<tag>/rank_<r>.json (per-step losses, grad norms, this rank's parameter shapes) and
OUT/<tag>/rank_<r>.npz (its final parameters, full-model names).

    mftasks launch --nproc-per-node 2 -- python tests/parallel/parity_rank.py OUT 1,2,1,1,0 1,1,2,2,1

A layout is dp,mp,pp,micro_batch_num,vocab_emb_dp[,optimizer_shard][+lora][+L<n_layer>] (+lora: only
LoRA adapters on every projection train, from a full state whose adapters are non-zero; +L4: 4 layers,
else 2).  The 1-process reference
(`reference_run`) is imported by the test and run in its own process: same seed, same initial weights, same
global batches.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

SEED, STEPS, GLOBAL_BATCH, SEQ, VOCAB = 1234, 20, 8, 16, 96


def tiny_config(n_layer: int = 2):
    from mftasks.model.config import GPT2Config

    return GPT2Config(name="custom", n_layer=n_layer, n_embd=64, n_head=4, seq_length=SEQ, vocab_size=VOCAB,
                      dropout=0.0, attention_dropout=0.0)


def training_args():
    from mftasks.training_args import TrainingArguments

    return TrainingArguments(learning_rate=2e-3, warmup_steps=2, weight_decay=0.1, max_grad_norm=1.0,
                             lr_scheduler_type="cosine")


def global_batches(steps: int = STEPS, seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per step: input_ids and attention_mask (GLOBAL_BATCH, SEQ + 1) int32.  Rows are learnable sequences
    (start + stride * t, modulo); every third row is padded at the end."""
    out = []
    for step in range(steps):
        rng = np.random.default_rng(seed + step)
        start = rng.integers(0, VOCAB - 4, size=(GLOBAL_BATCH, 1))
        stride = rng.integers(1, 4, size=(GLOBAL_BATCH, 1))
        ids = (4 + (start + stride * np.arange(SEQ + 1)) % (VOCAB - 4)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1::3, -5:] = 0
        ids[mask == 0] = 0
        out.append((ids, mask))
    return out


def eval_batch() -> tuple[np.ndarray, np.ndarray]:
    """A global batch no step trains on."""
    return global_batches(1, SEED + 1000)[0]


PROMPTS = [[4, 7, 10, 13], [50, 52, 54, 56, 58, 60], [90, 91, 92, 93, 94]]  # learnable sequences (stride 3, 2, 1)


def greedy(model) -> dict[str, list[list[int]]]:
    """Greedy continuations of PROMPTS, with and without the KV cache."""
    from mftasks.model.generate import generate

    return {name: generate(model, PROMPTS, max_new_tokens=8, eos_id=None, use_cache=cache)
            for name, cache in (("cached", True), ("recompute", False))}


def lora_config():
    from mftasks.model.lora import LoraConfig

    return LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=("q", "v", "attn_proj", "mlp_fc", "mlp_proj"))


def initial_state(config, lora: bool = False) -> dict[str, np.ndarray]:
    """The 1-process model's initial weights under SEED (what both sides start from); with lora, plus adapters
    whose B matrices are random too (so both A and B get gradients from the first step)."""
    import mindspore as ms

    from mftasks.model.gpt2 import GPT2LMHeadModel
    from mftasks.model.lora import apply_lora

    ms.set_seed(SEED)
    model = GPT2LMHeadModel(config)
    if lora:
        apply_lora(model, lora_config())
    rng = np.random.default_rng(SEED)
    return {p.name: (rng.normal(0, 0.05, p.shape).astype(np.float32) if ".lora_b_" in p.name else p.asnumpy())
            for p in model.get_parameters()}


def lora_model(model, full: dict[str, np.ndarray], state=None):
    """apply_lora, load `full` (sliced for `state`'s rank when given) and train only the adapters."""
    import mindspore as ms

    from mftasks.model.lora import apply_lora, mark_only_lora_as_trainable
    from mftasks.parallel.model import load_full_state

    apply_lora(model, lora_config())
    if state is None:
        for p in model.get_parameters():
            p.set_data(ms.Tensor(full[p.name]))
    else:
        load_full_state(model, full, state)
    return mark_only_lora_as_trainable(model)


def reference_run(n_layer: int = 2, steps: int = STEPS, lora: bool = False, generated: bool = False) -> dict:
    """One process, the Trainer's model, loss, optimizer and train step on the whole global batch (and with
    `generated`, the trained model's greedy continuations of PROMPTS)."""
    import mindspore as ms

    from mftasks.model.gpt2 import GPT2EvalLoss, GPT2LMHeadModel, GPT2WithLoss
    from mftasks.optim import build_optimizer, lr_schedule, train_step_cells

    config, args = tiny_config(n_layer), training_args()
    init = initial_state(config, lora)
    model = GPT2LMHeadModel(config)
    if lora:
        lora_model(model, init)
    else:
        for p in model.get_parameters():
            p.set_data(ms.Tensor(init[p.name]))
    opt = build_optimizer(model.trainable_params(), args, lr_schedule(args, steps))
    step, _ = train_step_cells(GPT2WithLoss(model), opt, args.max_grad_norm, 1)
    evaluate = GPT2EvalLoss(model)
    ids, mask = (ms.Tensor(a) for a in eval_batch())
    before = [float(v.asnumpy()) for v in evaluate(ids, mask)]
    losses = [float(step(ms.Tensor(i), ms.Tensor(m)).asnumpy()) for i, m in global_batches(steps)]
    after = [float(v.asnumpy()) for v in evaluate(ids, mask)]
    return {"losses": losses, "eval": [before, after], "generated": greedy(model) if generated else None,
            "state": {p.name: p.asnumpy() for p in model.get_parameters()}}


def check_scatter_gather(state) -> dict:
    """scatter -> x (mp_rank + 1) -> gather, forward and backward, on this rank's mp group: returns what the
    test compares with numpy (y = x * k, dx = w * k, k = each column's owner rank + 1)."""
    import mindspore as ms
    from mindspore import nn, ops

    from mftasks.parallel.mappings import gather_from_model_parallel_region, scatter_to_model_parallel_region

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.scatter = scatter_to_model_parallel_region(state.tp_group, state.mp_rank, state.mp_size)
            self.gather = gather_from_model_parallel_region(state.tp_group, state.mp_rank, state.mp_size)
            self.k = float(state.mp_rank + 1)

        def construct(self, x, w):
            return (self.gather(self.scatter(x) * self.k) * w).sum()

    class Grad(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net, self.grad = net, ops.GradOperation(get_all=True)

        def construct(self, x, w):
            return self.grad(self.net)(x, w)

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    net = Net()
    loss = float(net(ms.Tensor(x), ms.Tensor(w)).asnumpy())
    dx = Grad(net)(ms.Tensor(x), ms.Tensor(w))[0].asnumpy()
    return {"x": x.tolist(), "w": w.tolist(), "loss": loss, "dx": dx.tolist()}


def layout_of(spec: str):
    """dp,mp,pp,micro,vocab_emb_dp[,optimizer_shard][+options] -> ParallelConfig."""
    from mftasks.context import ParallelConfig

    dp, mp, pp, micro, vemb, *shard = (int(v) for v in spec.split("+")[0].split(","))
    return ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=micro,
                          vocab_emb_dp=bool(vemb), optimizer_shard=bool(shard and shard[0]))


def options_of(spec: str) -> tuple[bool, int]:
    """(lora, n_layer) from a spec's +lora / +L<n_layer> options (default: no LoRA, 2 layers)."""
    options = spec.split("+")[1:]
    layers = [int(o[1:]) for o in options if o.startswith("L")]
    return "lora" in options, layers[0] if layers else 2


def layout_tag(spec: str) -> str:
    """The folder of a layout's outputs."""
    pc, (lora, n_layer) = layout_of(spec), options_of(spec)
    return (f"dp{pc.data_parallel}_mp{pc.model_parallel}_pp{pc.pipeline_stage}_micro{pc.micro_batch_num}"
            f"_vemb{int(pc.vocab_emb_dp)}" + ("_zero1" if pc.optimizer_shard else "") + ("_lora" if lora else "")
            + (f"_L{n_layer}" if n_layer != 2 else ""))


def run_layout(spec: str, rank: int, out: Path, steps: int = STEPS) -> None:
    from mftasks.optim import lr_schedule
    from mftasks.parallel.groups import initialize_model_parallel
    from mftasks.parallel.optimizer import build_parallel_optimizer
    from mftasks.parallel.model import build_rank_model, rank_state
    from mftasks.parallel.step import ParallelEvalStep, ParallelTrainStep

    pc, (lora, n_layer) = layout_of(spec), options_of(spec)
    dp, mp, pp = pc.data_parallel, pc.model_parallel, pc.pipeline_stage
    config, args = tiny_config(n_layer), training_args()
    t0 = time.time()
    state = initialize_model_parallel(pc, rank)
    if lora:
        model = lora_model(build_rank_model(config, state), initial_state(config, lora=True), state)
    else:
        model = build_rank_model(config, state, initial_state(config))
    step = ParallelTrainStep(model, state, build_parallel_optimizer(model, state, args, lr_schedule(args, steps)),
                             args.max_grad_norm)
    rows = GLOBAL_BATCH // dp
    d = state.place.dp_rank

    def mine(batch):  # this replica's rows of a global batch
        return tuple(a[d * rows:(d + 1) * rows] for a in batch)

    evaluate = ParallelEvalStep(model, state)
    before = evaluate(*mine(eval_batch()))
    results = [step(*mine(batch)) for batch in global_batches(steps)]
    after = evaluate(*mine(eval_batch()))
    tag = layout_tag(spec)
    folder = out / tag
    folder.mkdir(parents=True, exist_ok=True)
    params = rank_state(model)
    adam = getattr(step.optimizer, "optimizer", step.optimizer)  # DistributedOptimizer wraps the Trainer's
    np.savez(folder / f"rank_{rank}.npz", **params)
    (folder / f"rank_{rank}.json").write_text(json.dumps({
        "layout": spec, "rank": rank, "place": [state.place.stage, state.place.dp_rank, state.place.mp_rank],
        "losses": [r.loss for r in results], "grad_norms": [r.grad_norm for r in results], "eval": [before, after],
        "shapes": {k: list(v.shape) for k, v in params.items()}, "seconds": time.time() - t0,
        "moment_elements": int(sum(np.prod(m.shape) for m in adam.moments1)),
        "scatter_gather": check_scatter_gather(state) if mp > 1 and pp == 1 else None,
        "generated": greedy(model) if mp > 1 and pp == 1 else None}))
    print(f"rank {rank} {tag}: losses {[round(r.loss, 5) for r in results]} ({time.time() - t0:.1f} s)", flush=True)


def main(argv: list[str]) -> None:
    import mindspore as ms
    from mindspore.communication import get_rank, init

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=1)
    init()
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return
    for spec in argv[1:]:
        run_layout(spec, get_rank(), Path(argv[0]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1:])
