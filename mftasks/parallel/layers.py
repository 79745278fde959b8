"""Tensor-parallel layers (Megatron's `tensor_parallel/layers.py`), named for what they split.

Each keeps the reference parameter names (`weight`, `bias`, `embedding_table`), so a rank's slice maps
1:1 to the full parameter of the same name (how: `mftasks.parallel.shards`).  Dense weights are (out, in)
as in `nn.Dense`.

- ColumnParallelLinear: weight (out / mp, in), bias (out / mp): this rank's output columns.  Input goes
  through copy_to_model_parallel_region (its gradient is summed over the mp group).  Output stays split.
- RowParallelLinear: weight (out, in / mp), bias (out) replicated.  Takes split input, all-reduces the
  partial products, then adds the bias once.
- VocabParallelEmbedding: embedding_table (V / mp, C): rows [mp_rank * V/mp, (mp_rank + 1) * V/mp).  Ids
  outside this rank's rows look up zeros; the partial embeddings are all-reduced.
- VocabParallelCrossEntropy: cross-entropy from vocabulary-split logits without gathering them.

CPU-tested (GRAPH mode, mccl); Ascend/GPU untested.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from .mappings import copy_to_model_parallel_region, reduce_from_model_parallel_region

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelCrossEntropy", "VocabParallelEmbedding"]


def _dense(x, weight, bias, matmul):
    """nn.Dense's own computation (same ops, same numerics): x (..., in) -> (..., out)."""
    shape = x.shape
    y = matmul(x.reshape(-1, shape[-1]), weight)
    if bias is not None:
        y = ops.bias_add(y, bias)
    return y.reshape(shape[:-1] + (y.shape[-1],))


class ColumnParallelLinear(nn.Dense):
    """Y = X A^T + b with A split by output rows (columns of the output) across the mp group."""

    def __init__(self, in_channels: int, out_channels: int, *, mp_size: int, group: str | None,
                 weight_init=None, bias_init="zeros"):
        super().__init__(in_channels, out_channels // mp_size, weight_init=weight_init or Normal(0.02),
                         bias_init=bias_init)
        self.full_out_channels, self.group = out_channels, group
        self.copy_in = copy_to_model_parallel_region(group)

    def construct(self, x):
        x = self.copy_in(x)
        return _dense(x, self.weight, self.bias if self.has_bias else None, self.matmul)


class RowParallelLinear(nn.Dense):
    """Y = X A^T + b with A split by input columns; X arrives split (the output of a column-parallel layer)."""

    def __init__(self, in_channels: int, out_channels: int, *, mp_size: int, group: str | None,
                 weight_init=None, bias_init="zeros"):
        super().__init__(in_channels // mp_size, out_channels, weight_init=weight_init or Normal(0.02),
                         bias_init=bias_init)
        self.full_in_channels, self.group = in_channels, group
        self.reduce_out = reduce_from_model_parallel_region(group)

    def construct(self, x):
        y = self.reduce_out(_dense(x, self.weight, None, self.matmul))
        return ops.bias_add(y.reshape(-1, y.shape[-1]), self.bias).reshape(y.shape) if self.has_bias else y


class VocabParallelEmbedding(nn.Cell):
    """Token embedding split by vocabulary rows; `embedding_table` is this rank's (V / mp, C) block."""

    def __init__(self, vocab_size: int, embedding_size: int, *, mp_rank: int, mp_size: int, group: str | None,
                 embedding_table=None):
        super().__init__()
        per = vocab_size // mp_size
        self.vocab_start, self.vocab_end = mp_rank * per, (mp_rank + 1) * per
        self.embedding_table = ms.Parameter(
            ms.common.initializer.initializer(embedding_table or Normal(0.02), (per, embedding_size), ms.float32),
            name="embedding_table")
        self.reduce_out = reduce_from_model_parallel_region(group)

    def construct(self, ids):
        inside = ops.logical_and(ids >= self.vocab_start, ids < self.vocab_end)  # (B, T)
        local = ops.where(inside, ids - self.vocab_start, ops.zeros_like(ids))
        x = ops.gather(self.embedding_table, local, 0) * inside.astype(ms.float32).expand_dims(-1)  # (B, T, C)
        return self.reduce_out(x)


class VocabParallelCrossEntropy(nn.Cell):
    """Per-row cross-entropy (N,) from logits split by vocabulary (N, V / mp) and labels (N,) in [0, V).

    Shift: CPU AllReduce only sums, so instead of the global row maximum the logits are shifted by the
    mean of the ranks' row maxima (a constant per row, no gradient): exact in exact arithmetic, and in
    float32 it only needs the ranks' maxima to lie within ~80 of each other (true of any trained LM).
    The sums are all-reduced forward with an identity backward (every rank holds the same loss), so each
    rank's gradient for its logits is softmax - one_hot restricted to its columns.
    """

    def __init__(self, vocab_start: int, mp_size: int, group: str | None):
        super().__init__()
        self.vocab_start, self.mp_size = vocab_start, mp_size
        self.sum_over_mp = reduce_from_model_parallel_region(group)

    def construct(self, logits, labels):
        N, V_local = logits.shape
        shift = ops.stop_gradient(self.sum_over_mp(logits.max(axis=-1, keepdims=True)) / self.mp_size)  # (N, 1)
        shifted = logits - shift
        sum_exp = self.sum_over_mp(ops.exp(shifted).sum(axis=-1))  # (N,)
        local = labels - self.vocab_start
        inside = ops.logical_and(local >= 0, local < V_local)
        picked = ops.gather(shifted, ops.where(inside, local, ops.zeros_like(local)).reshape(N, 1), 1,
                            batch_dims=1).reshape(N)
        target = self.sum_over_mp(picked * inside.astype(ms.float32))  # (N,) shifted logit of the label
        return ops.log(sum_exp) - target
