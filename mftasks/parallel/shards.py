"""How a rank's parameters map to the full model's: which stage holds a parameter, which axis of it is
split across the tensor-parallel group, and the slice/merge functions that go both ways exactly.

Names are the full model's (`transformer.h.3.attn.c_attn.weight`), also on a pipeline stage that holds
only blocks 2-3.  Splits under model_parallel = mp (full shapes as in the 1-process model, Dense (out, in)):

    attn.c_attn.weight (3C, C), .bias (3C)   fused q | k | v: rank m holds q[m], k[m], v[m] stacked, i.e.
                                             rows {i*C + m*C/mp .. i*C + (m+1)*C/mp : i = 0, 1, 2}
                                             (its heads m*nh/mp .. (m+1)*nh/mp - 1 of each of q, k, v)
    mlp.c_fc.weight (4C, C), .bias (4C)      rows m*4C/mp .. (m+1)*4C/mp
    attn.c_proj.weight (C, C)                columns m*C/mp .. (m+1)*C/mp   (bias replicated)
    mlp.c_proj.weight (C, 4C)                columns m*4C/mp .. (m+1)*4C/mp (bias replicated)
    wte.embedding_table (V, C)               rows m*V/mp .. (m+1)*V/mp when vocab_emb_dp=False, else replicated
    everything else (wpe, LayerNorms, row-parallel biases)   replicated
    LoRA adapters (`<layer>.lora_a_<t>` (r, in), `<layer>.lora_b_<t>` (out_t, r)) are split like their layer:
    lora_b of c_attn / c_fc by rows (lora_b_q: this rank's rows of q), lora_a of the c_proj layers by
    columns; the other adapter matrix of each pair is replicated

Stages: `transformer.h.i` lives on stage i // (n_layer / pp); wpe on the first stage; ln_f on the last;
the tied wte on the first and the last (the same values on both: their gradients are summed over the
embedding group).  Every dp replica holds the same values.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .layout import RankPlace, place_of, rank_of

if TYPE_CHECKING:
    from mftasks.context import ParallelConfig
    from mftasks.model.config import GPT2Config

__all__ = ["merge_rank_states", "param_stages", "shard_full_state", "slice_of", "split_axis", "tied_copy"]

_FUSED_QKV = ("attn.c_attn.weight", "attn.c_attn.bias")
_ROW_SPLIT = ("mlp.c_fc.weight", "mlp.c_fc.bias")  # split along axis 0 (output rows)
_COL_SPLIT = ("attn.c_proj.weight", "mlp.c_proj.weight")  # split along axis 1 (input columns)
_WTE = "transformer.wte.embedding_table"
_COLUMN_LAYERS, _ROW_LAYERS = ("attn.c_attn", "mlp.c_fc"), ("attn.c_proj", "mlp.c_proj")


def split_axis(name: str, pc: ParallelConfig) -> int | None:
    """The axis of the full parameter split across the mp group, or None when every mp rank holds it whole."""
    if pc.model_parallel == 1:
        return None
    if name.endswith(_FUSED_QKV) or name.endswith(_ROW_SPLIT):
        return 0
    if name.endswith(_COL_SPLIT):
        return 1
    if name == _WTE and not pc.vocab_emb_dp:
        return 0
    layer, _, leaf = name.rpartition(".")  # LoRA adapters are split like their base layer
    if leaf.startswith("lora_b_") and layer.endswith(_COLUMN_LAYERS):
        return 0
    if leaf.startswith("lora_a_") and layer.endswith(_ROW_LAYERS):
        return 1
    return None


def param_stages(name: str, pc: ParallelConfig, config: GPT2Config) -> tuple[int, ...]:
    """The pipeline stages holding `name` (two for the tied word embedding when pp > 1)."""
    last = pc.pipeline_stage - 1
    if name.startswith("transformer.h."):
        return (int(name.split(".")[2]) // (config.n_layer // pc.pipeline_stage),)
    if name == _WTE:
        return (0, last) if last else (0,)
    if name.startswith("transformer.wpe."):
        return (0,)
    return (last,)  # ln_f


def tied_copy(name: str, place: RankPlace) -> bool:
    """Whether this rank's `name` is the last stage's copy of the tied embedding (counted once elsewhere)."""
    return name == _WTE and place.pp > 1 and place.is_last_stage


def slice_of(name: str, full: np.ndarray, pc: ParallelConfig, mp_rank: int) -> np.ndarray:
    """The part of the full parameter `full` that tensor-parallel rank `mp_rank` holds."""
    axis, mp = split_axis(name, pc), pc.model_parallel
    if axis is None:
        return full
    if name.endswith(_FUSED_QKV):  # (3C, ...) -> (3, mp, C/mp, ...) -> [:, m] -> (3C/mp, ...)
        blocks = full.reshape((3, mp, full.shape[0] // (3 * mp)) + full.shape[1:])
        return np.ascontiguousarray(blocks[:, mp_rank].reshape((-1,) + full.shape[1:]))
    return np.ascontiguousarray(np.split(full, mp, axis=axis)[mp_rank])


def _merge_mp(name: str, parts: list[np.ndarray], pc: ParallelConfig) -> np.ndarray:
    axis = split_axis(name, pc)
    if axis is None:
        return parts[0]
    if name.endswith(_FUSED_QKV):  # mp x (3C/mp, ...) -> (3, mp, C/mp, ...) -> (3C, ...)
        blocks = np.stack([p.reshape((3, -1) + p.shape[1:]) for p in parts], axis=1)
        return blocks.reshape((-1,) + parts[0].shape[1:])
    return np.concatenate(parts, axis=axis)


def shard_full_state(full: dict[str, np.ndarray], pc: ParallelConfig, config: GPT2Config,
                     rank: int) -> dict[str, np.ndarray]:
    """The parameters `rank` holds, cut from a full (1-process) state dict; other entries (optimizer
    state...) are left out."""
    place = place_of(pc, rank)
    return {name: slice_of(name, value, pc, place.mp_rank) for name, value in full.items()
            if name.startswith("transformer.") and place.stage in param_stages(name, pc, config)}


def merge_rank_states(states: dict[int, dict[str, np.ndarray]], pc: ParallelConfig, config: GPT2Config,
                      dp_rank: int = 0) -> dict[str, np.ndarray]:
    """The full state dict from every rank's parameters (`states[rank]`, as `shard_full_state` returns),
    taking replica `dp_rank`; the exact inverse of shard_full_state.  The tied embedding is read from the
    first stage.  Raises ValueError naming what is missing."""
    names = sorted({n for s in states.values() for n in s})
    full, missing = {}, []
    for name in names:
        stage = param_stages(name, pc, config)[0]
        ranks = [rank_of(pc, stage, dp_rank, m) for m in range(pc.model_parallel)]
        absent = [r for r in ranks if name not in states.get(r, {})]
        if absent:
            missing.append(f"{name} (ranks {absent})")
            continue
        full[name] = _merge_mp(name, [states[r][name] for r in ranks], pc)
    if missing:
        raise ValueError("cannot merge: missing " + ", ".join(missing))
    return full
