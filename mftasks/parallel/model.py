"""One rank's GPT-2: build it for (config, layout, rank), fill it from a full state, read its parameters.

    state = initialize_model_parallel(layout)                # groups of this rank
    model = build_rank_model(config, state, full_state=sd)   # only this rank's stage and slices
    rank_state(model)                                        # {full-model name: this rank's slice}

CPU-tested; Ascend/GPU untested.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np

from mftasks.model.config import GPT2Config
from mftasks.model.gpt2 import GPT2LMHeadModel

from .groups import ParallelState
from .shards import shard_full_state

__all__ = ["build_rank_model", "load_full_state", "rank_state"]


def build_rank_model(config: GPT2Config, state: ParallelState,
                     full_state: dict[str, np.ndarray] | None = None) -> GPT2LMHeadModel:
    """This rank's part of the model; from `full_state` (a 1-process state dict) when given.

    Without full_state each rank initialises its own slices with the model's distributions, which keeps
    replicated parameters equal across ranks only if every rank set the same seed; pass full_state (or load
    a checkpoint) for a start equal to a 1-process model's."""
    model = GPT2LMHeadModel(config, state)
    if full_state is not None:
        load_full_state(model, full_state, state)
    return model


def load_full_state(model: GPT2LMHeadModel, full: dict[str, np.ndarray], state: ParallelState) -> None:
    """Copy this rank's slices of the full state dict `full` into `model` (every parameter must be found)."""
    mine = shard_full_state(full, state.layout, model.config, state.place.rank)
    params = {p.name: p for p in model.get_parameters()}
    missing = sorted(set(params) - set(mine))
    if missing:
        raise ValueError(f"full state lacks {', '.join(missing)}")
    for name, p in params.items():
        if tuple(mine[name].shape) != tuple(p.shape):
            raise ValueError(f"{name}: slice {mine[name].shape} does not fit this rank's parameter {p.shape}")
        p.set_data(ms.Tensor(mine[name], p.dtype))


def rank_state(model: GPT2LMHeadModel) -> dict[str, np.ndarray]:
    """{name: value} of this rank's parameters (names as in the full model; merge with shards.merge_rank_states)."""
    return {p.name: p.asnumpy() for p in model.get_parameters()}
