"""The four tiny communication operators of tensor parallelism (Megatron's `mappings.py`) and the
pipeline's point-to-point transfer, written with AllReduce only (what MindSpore's CPU backend has on
sub-groups).  Each is a Cell with a custom `bprop`, so it works inside compiled (GRAPH mode) forward
and backward graphs.

    copy_to_model_parallel_region       forward identity             backward all-reduce
    reduce_from_model_parallel_region   forward all-reduce           backward identity
    scatter_to_model_parallel_region    forward keep own last-dim slice   backward gather
    gather_from_model_parallel_region   forward gather last dim      backward keep own slice

"Gather" is an AllReduce of a zero tensor in which each rank has written its slice at its offset
(AllGather works only on the world group on CPU).  A point-to-point send between pipeline neighbours is an
AllReduce on their two-rank group in which the receiver contributes zeros (`PipeTransfer`).

A group of None (a group of one rank) makes every operator the identity.  CPU-tested (mccl); on
Ascend/GPU the same ops run on HCCL/NCCL but are untested here (and Send/Receive could replace PipeTransfer).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

__all__ = [
    "PipeTransfer", "copy_to_model_parallel_region", "gather_from_model_parallel_region",
    "reduce_from_model_parallel_region", "scatter_to_model_parallel_region",
]


class _Identity(nn.Cell):
    def construct(self, x):
        return x


class _CopyToModelParallelRegion(nn.Cell):
    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)

    def construct(self, x):
        return x

    def bprop(self, x, out, dout):
        return (self.all_reduce(dout),)


class _ReduceFromModelParallelRegion(nn.Cell):
    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)

    def construct(self, x):
        return self.all_reduce(x)

    def bprop(self, x, out, dout):
        return (dout,)


def _own_slice(x, rank: int, size: int):
    width = x.shape[-1] // size
    return x[..., rank * width:(rank + 1) * width]


def _placed(x, rank: int, size: int):
    """x (..., w) written at columns [rank*w, (rank+1)*w) of a zero tensor (..., size*w)."""
    w = x.shape[-1]
    pads = [ops.zeros(x.shape[:-1] + (w,), x.dtype) for _ in range(size)]
    pads[rank] = x
    return ops.cat(pads, axis=-1)


class _SlicedRegion(nn.Cell):
    """Base of the scatter/gather pair: the group, this rank's index in it and its size."""

    def __init__(self, group: str, rank: int, size: int):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)
        self.rank, self.size = rank, size


class _ScatterToModelParallelRegion(_SlicedRegion):
    def construct(self, x):
        return _own_slice(x, self.rank, self.size)

    def bprop(self, x, out, dout):
        return (self.all_reduce(_placed(dout, self.rank, self.size)),)


class _GatherFromModelParallelRegion(_SlicedRegion):
    def construct(self, x):
        return self.all_reduce(_placed(x, self.rank, self.size))

    def bprop(self, x, out, dout):
        return (_own_slice(dout, self.rank, self.size),)


def copy_to_model_parallel_region(group: str | None) -> nn.Cell:
    """Identity forward, all-reduce of the gradient backward (input of a column-parallel layer)."""
    return _Identity() if group is None else _CopyToModelParallelRegion(group)


def reduce_from_model_parallel_region(group: str | None) -> nn.Cell:
    """All-reduce forward, identity backward (output of a row-parallel layer, vocab-parallel embedding)."""
    return _Identity() if group is None else _ReduceFromModelParallelRegion(group)


def scatter_to_model_parallel_region(group: str | None, rank: int, size: int) -> nn.Cell:
    """Keep this rank's slice of the last dimension forward; gather the gradient backward."""
    return _Identity() if group is None else _ScatterToModelParallelRegion(group, rank, size)


def gather_from_model_parallel_region(group: str | None, rank: int, size: int) -> nn.Cell:
    """Concatenate the ranks' last-dimension slices forward; keep this rank's slice of the gradient backward."""
    return _Identity() if group is None else _GatherFromModelParallelRegion(group, rank, size)


class PipeTransfer(nn.Cell):
    """A point-to-point transfer between two pipeline neighbours as an AllReduce on their two-rank group:
    the sender passes its tensor, the receiver zeros of the same shape; both get the sender's tensor.
    Both sides must call it in the same order (the schedule guarantees it)."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(group=group)

    def construct(self, x):
        return self.all_reduce(x)

    def send(self, x: ms.Tensor) -> None:
        self(x)

    def recv(self, shape: tuple[int, ...], dtype=ms.float32) -> ms.Tensor:
        return self(ops.zeros(shape, dtype))
