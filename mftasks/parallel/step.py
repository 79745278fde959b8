"""One optimizer step and one evaluation of a dp x mp x pp layout (`ParallelTrainStep`, `ParallelEvalStep`),
over the schedules of `mftasks.parallel.pipeline`.

One optimizer step, on this rank's replica share of the global batch:
1. loss scale = 1 / (label tokens of the global batch) (the token count is summed over the dp group), so
   the micro-batch losses sum to the 1-process loss, a token-weighted mean over the global batch;
2. the schedule accumulates parameter gradients over micro_batch_num micro-batches;
3. the tied embedding's gradient is summed over the embedding group (first + last stage, pp > 1);
4. gradients are summed over the data-parallel group (gradient_aggregation_group flat AllReduces);
5. the global gradient norm (every element counted once: split slices on each mp rank, replicated
   parameters on mp rank 0, the tied embedding on the first stage) is summed over the replica's model
   group, and the gradients are clipped as `ops.clip_by_global_norm` does;
6. the optimizer steps: the Trainer's (`mftasks.optim.build_optimizer` over `model.trainable_params()`), or
   with optimizer_shard its ZeRO-1 form (`mftasks.parallel.optimizer.DistributedOptimizer`); build either
   with `build_parallel_optimizer`;
7. the reported loss is summed over the world group: the same global-batch mean on every rank.

Evaluation: the same pipeline, forwards only, returning the global batch's (sum of token losses, label
tokens) on every rank, for a token-weighted eval loss / PPL.

CPU-tested with mp2, pp2, dp2 (+ optimizer_shard), dp2 x mp2, mp2 x pp2 and LoRA on mp2 / mp2 x pp2 against
one process (tests/test_parallel_parity.py); Ascend/GPU untested.  Not implemented (refused by
`step_problems`): use_seq_parallel, micro_batch_interleave_num > 1, dropout with pp > 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mftasks.errors import ConfigError
from mftasks.model.config import GPT2Config
from mftasks.model.gpt2 import GPT2LMHeadModel

from .groups import ParallelState
from .layout import layout_problems
from .optimizer import DistributedOptimizer
from .pipeline import (
    MicroBatch,
    PipelineStage,
    forward_backward_no_pipelining,
    forward_backward_pipelining_without_interleaving,
    forward_only,
)
from .shards import split_axis, tied_copy

__all__ = ["ParallelEvalStep", "ParallelTrainStep", "StepResult", "step_problems"]


def step_problems(state: ParallelState, config: GPT2Config) -> list[str]:
    """What this module cannot (yet) run for the layout, each naming its field."""
    pc, problems = state.layout, []
    if pc.use_seq_parallel:
        problems.append("use_seq_parallel=True: sequence parallelism is not implemented; set it to false")
    if pc.micro_batch_interleave_num > 1:
        problems.append(f"micro_batch_interleave_num={pc.micro_batch_interleave_num}: not implemented; set it to 1")
    if pc.pipeline_stage > 1 and (config.dropout or config.attention_dropout):
        problems.append(f"dropout={config.dropout}, attention_dropout={config.attention_dropout} with "
                        f"pipeline_stage={pc.pipeline_stage}: a stage's backward recomputes its forward with new "
                        "dropout masks; set both to 0 (or pipeline_stage: 1)")
    return problems


_SUMS: dict[str, nn.Cell] = {}


def _all_reduce(x: ms.Tensor, group: str | None) -> ms.Tensor:
    """Sum of x over `group` ("world": every rank; None: a group of one, x itself)."""
    if group is None:
        return x
    if group not in _SUMS:
        _SUMS[group] = ops.AllReduce() if group == "world" else ops.AllReduce(group=group)
    return _SUMS[group](x)


def _over_world(state: ParallelState, *values: float) -> list[float]:
    """Each last-stage value summed over every replica (the mp ranks of a last stage hold the same value)."""
    mine = [v / state.mp_size if state.place.is_last_stage else 0.0 for v in values]
    if state.layout.world_size == 1:
        return mine
    return [float(v) for v in _all_reduce(ms.Tensor(mine, ms.float32), "world").asnumpy()]


def _micro_batches(input_ids: np.ndarray, attention_mask: np.ndarray, micro: int) -> list[MicroBatch]:
    B = input_ids.shape[0]
    if B % micro:
        raise ConfigError(f"{B} rows per replica are not divisible by micro_batch_num={micro}",
                          where="mftasks.parallel")
    b = B // micro
    return [(ms.Tensor(input_ids[i:i + b], ms.int32), ms.Tensor(attention_mask[i:i + b], ms.int32))
            for i in range(0, B, b)]


class ParallelEvalStep:
    """Token-weighted evaluation of one global batch: `(loss sum, label tokens)` over every replica, the same
    on every rank (each replica passes its rows, as for ParallelTrainStep).  Mean loss = sum / tokens."""

    def __init__(self, model: GPT2LMHeadModel, state: ParallelState):
        ConfigError.raise_if(layout_problems(state.layout, model.config), where="ParallelEvalStep")
        self.state, self.stage = state, PipelineStage(model, state)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[float, float]:
        micro = _micro_batches(input_ids, attention_mask, self.state.layout.micro_batch_num)
        loss, tokens = _over_world(self.state, *forward_only(self.stage, micro))
        return loss, tokens


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Token-weighted mean loss over the global batch (the same on every rank)."""
    grad_norm: float
    """Global gradient norm before clipping."""


class ParallelTrainStep:
    """One optimizer step of this rank for its layout (see the module docstring for the order of work).

        step = ParallelTrainStep(model, state, build_parallel_optimizer(model, state, args, lrs),
                                 args.max_grad_norm)
        result = step(input_ids, attention_mask)   # this replica's rows of the global batch, numpy int32

    Every rank of a replica (its mp x pp ranks) passes the same rows; replica d gets rows
    [d * B/dp, (d + 1) * B/dp) of the global batch (any split of the global batch gives the same step).
    """

    def __init__(self, model: GPT2LMHeadModel, state: ParallelState, optimizer: nn.Optimizer,
                 max_grad_norm: float | None = None):
        pc = state.layout
        problems = layout_problems(pc, model.config) + step_problems(state, model.config)
        if pc.optimizer_shard != isinstance(optimizer, DistributedOptimizer):
            problems.append(f"optimizer_shard={pc.optimizer_shard} but the optimizer is a {type(optimizer).__name__}; "
                            "build it with mftasks.parallel.optimizer.build_parallel_optimizer")
        ConfigError.raise_if(problems, where="ParallelTrainStep")
        self.state, self.optimizer, self.max_grad_norm = state, optimizer, max_grad_norm
        self.stage = PipelineStage(model, state)
        self.micro = pc.micro_batch_num
        self.names = [p.name for p in self.stage.weights]
        place = state.place
        # Elements counted in the global norm: split slices everywhere, replicated ones on mp rank 0, the
        # last stage's copy of the tied embedding never.
        self.norm_mask = [not tied_copy(n, place) and (split_axis(n, pc) is not None or place.mp_rank == 0)
                          for n in self.names]
        wte = "transformer.wte.embedding_table"  # trained unless frozen (LoRA)
        self.wte = self.names.index(wte) if state.embedding_group and wte in self.names else None
        self.schedule = (forward_backward_pipelining_without_interleaving if pc.pipeline_stage > 1
                         else forward_backward_no_pipelining)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> StepResult:
        st = self.state
        micro = _micro_batches(input_ids, attention_mask, self.micro)
        tokens = np.array([attention_mask[:, 1:].sum()], dtype=np.float32)
        tokens = float(_all_reduce(ms.Tensor(tokens), st.dp_group).asnumpy()[0])
        scale = ms.Tensor(1.0 / max(tokens, 1.0), ms.float32)
        loss, grads = self.schedule(self.stage, micro, scale)
        grads = list(grads)
        if self.wte is not None:
            grads[self.wte] = _all_reduce(grads[self.wte], st.embedding_group)
        grads = self._dp_sum(grads)
        norm = self._global_norm(grads)
        if self.max_grad_norm:
            coef = ms.Tensor(self.max_grad_norm / max(norm, self.max_grad_norm), ms.float32)
            grads = [g * coef for g in grads]
        self.optimizer(tuple(grads))
        return StepResult(_over_world(st, loss)[0], norm)

    def _dp_sum(self, grads: list[ms.Tensor]) -> list[ms.Tensor]:
        """Gradients summed over the dp group, in gradient_aggregation_group flat AllReduces (contiguous runs
        of parameters, MindSpore's fusion groups for the gradient all-reduce)."""
        if self.state.dp_group is None:
            return grads
        out = []
        for run in np.array_split(np.arange(len(grads)), min(self.state.layout.gradient_aggregation_group, len(grads))):
            group = [grads[i] for i in run]
            flat = _all_reduce(ops.cat([g.reshape(-1) for g in group]), self.state.dp_group)
            parts = ops.split(flat, [int(np.prod(g.shape)) for g in group])
            out += [p.reshape(g.shape) for p, g in zip(parts, group)]
        return out

    def _global_norm(self, grads: list[ms.Tensor]) -> float:
        squares = [ops.square(g).sum() for g, keep in zip(grads, self.norm_mask) if keep]
        local = ops.stack(squares).sum().reshape(1) if squares else ms.Tensor([0.0], ms.float32)
        return float(np.sqrt(_all_reduce(local, self.state.model_group).asnumpy()[0]))
