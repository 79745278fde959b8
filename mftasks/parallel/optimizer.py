"""Optimizer parallelism (`optimizer_shard`, ZeRO-1; Megatron's `DistributedOptimizer`): each data-parallel
rank keeps the AdamW state of only 1/dp of its parameters.

This rank's parameters are flattened into two vectors (weight-decayed ones: ndim >= 2; the rest), each
padded to a multiple of dp and cut into dp contiguous shards; replica d owns shard d of both.  A step:
1. gradients arrive summed over the dp group (on CPU with AllReduce: ReduceScatter does not exist there);
2. the Trainer's optimizer (`mftasks.optim.build_optimizer`, AdamWeightDecay, element-wise) updates only
   this rank's shards, held as two parameters: its moment buffers are 1/dp of the unsharded ones;
3. the updated shards are put back together with an AllReduce over the dp group in which each rank
   contributes its shard at its offset and zeros elsewhere (AllGather works only on the world group on
   CPU), and copied into the model's parameters.
Because AdamWeightDecay is element-wise, the result equals the unsharded optimizer's exactly.

CPU-tested (dp2 against one process, tests/test_parallel_parity.py); Ascend/GPU untested.  Checkpointing
the sharded state is not written yet (Trainer integration).
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import ops

from .groups import ParallelState

__all__ = ["DistributedOptimizer", "build_parallel_optimizer"]


class _FlatShard:
    """One kind of parameters (decayed or not) flattened, padded and cut: this rank's piece of it."""

    def __init__(self, params: list[ms.Parameter], dp: int, dp_rank: int, name: str, matrix: bool):
        self.params = params
        self.sizes = [int(np.prod(p.shape)) for p in params]
        total = sum(self.sizes)
        self.width = -(-total // dp)  # ceil
        self.start, self.dp, self.dp_rank = dp_rank * self.width, dp, dp_rank
        self.padding = self.width * dp - total
        flat = self._flat([ms.Tensor(p.asnumpy()) for p in params]).asnumpy()
        piece = flat[self.start:self.start + self.width]
        # A (1, n) shard is weight-decayed by build_optimizer (ndim >= 2), an (n,) shard is not.
        self.shard = ms.Parameter(ms.Tensor(piece.reshape((1, -1) if matrix else (-1,))), name=name)

    def _flat(self, tensors) -> ms.Tensor:
        parts = [t.reshape(-1) for t in tensors]
        if self.padding:
            parts.append(ops.zeros((self.padding,), ms.float32))
        return ops.cat(parts)

    def grad(self, grads: list[ms.Tensor]) -> ms.Tensor:
        return self._flat(grads)[self.start:self.start + self.width].reshape(self.shard.shape)

    def write_back(self, all_reduce) -> None:
        pieces = [ops.zeros((self.width,), ms.float32) for _ in range(self.dp)]
        pieces[self.dp_rank] = self.shard.value().reshape(-1)
        flat = all_reduce(ops.cat(pieces))
        offset = 0
        for p, n in zip(self.params, self.sizes):
            ops.assign(p, flat[offset:offset + n].reshape(p.shape))
            offset += n


class DistributedOptimizer:
    """The Trainer's optimizer over this rank's 1/dp shard of its parameters; called with the full gradients
    (summed over the dp group, in `params` order) like an nn.Optimizer."""

    def __init__(self, params, args, lrs: np.ndarray, state: ParallelState):
        from mftasks.optim import build_optimizer

        self.params = list(params)
        dp, d = state.layout.data_parallel, state.place.dp_rank
        decay = [i for i, p in enumerate(self.params) if len(p.shape) >= 2]
        rest = [i for i, p in enumerate(self.params) if len(p.shape) < 2]
        self.kinds = [(idx, _FlatShard([self.params[i] for i in idx], dp, d, f"zero_shard_{kind}", kind == "decay"))
                      for idx, kind in ((decay, "decay"), (rest, "no_decay")) if idx]
        self.optimizer = build_optimizer([flat.shard for _, flat in self.kinds], args, lrs)
        group = state.dp_group
        self._all_reduce = ops.AllReduce(group=group) if group else (lambda x: x)

    @property
    def shard_parameters(self) -> list[ms.Parameter]:
        """This rank's parameter shards (what its optimizer state is kept for)."""
        return [flat.shard for _, flat in self.kinds]

    def __call__(self, grads) -> None:
        grads = list(grads)
        self.optimizer(tuple(flat.grad([grads[i] for i in idx]) for idx, flat in self.kinds))
        for _, flat in self.kinds:
            flat.write_back(self._all_reduce)


def build_parallel_optimizer(model, state: ParallelState, args, lrs: np.ndarray):
    """The optimizer the layout asks for: DistributedOptimizer when optimizer_shard, else the Trainer's."""
    from mftasks.optim import build_optimizer

    if state.layout.optimizer_shard:
        return DistributedOptimizer(model.trainable_params(), args, lrs, state)
    return build_optimizer(model.trainable_params(), args, lrs)
