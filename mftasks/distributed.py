"""This process's place in the job (rank, world size), the reductions across ranks the Trainer needs, and
the checks of a parallel layout against this job.

MindSpore's communication is initialised by `mftasks.context` when the launcher started several ranks; a
process started alone is rank 0 of a world of 1 and never calls a collective.
"""
from __future__ import annotations

import numpy as np


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: from MindSpore's communication when it was initialised."""
    try:
        from mindspore.communication.management import GlobalComm, get_group_size, get_rank
    except ImportError:
        return 0, 1
    if not GlobalComm.INITED:
        return 0, 1
    return get_rank(), get_group_size()


def all_reduce_min(value: int) -> int:
    """The smallest of every rank's `value`."""
    import mindspore as ms
    from mindspore import ops

    # CPU collectives: AllReduce sums float only, so gather every rank's value and take the minimum here.
    out = ops.AllGather()(ms.Tensor(np.array([value], dtype=np.float32)))
    return int(out.asnumpy().min())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of every rank's `values` (float32: CPU AllReduce has no float64)."""
    import mindspore as ms
    from mindspore import ops

    out = ops.AllReduce()(ms.Tensor(np.array(values, dtype=np.float32)))
    return [float(x) for x in out.asnumpy()]


def device_target() -> str:
    """MindSpore's device_target; DeviceError when that device cannot be used here."""
    import mindspore as ms

    from .context import device_unavailable_reason
    from .errors import DeviceError

    target = ms.get_context("device_target")
    reason = device_unavailable_reason(target)
    if reason:
        raise DeviceError(f"MindSpore's device_target is {target!r} but {reason}; set device_target='CPU'")
    return target


def layout_problems(layout) -> list[str]:
    """Why a ParallelConfig cannot split the model in this job: on MindSpore's device, over this world size."""
    from .context import check_parallel_supported

    problems = check_parallel_supported(layout, device_target())
    _, world = rank_and_world()
    if layout.world_size != world:
        problems.append(
            f"data_parallel * model_parallel * pipeline_stage = {layout.world_size} but this job has "
            f"{world} process(es)" + ("; a single process accepts only a world size of 1: start the ranks "
                                     "with `mftasks launch --nproc-per-node N`" if world == 1 else ""))
    return problems
