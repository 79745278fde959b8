"""Where each rank sits in a dp x mp x pp layout, and every reason a layout cannot split a model.

The layout is the run's `ParallelConfig` (mftasks.context; MindFormers' `parallel_config`): data_parallel
(dp), model_parallel (mp, tensor parallelism), pipeline_stage (pp), micro_batch_num, optimizer_shard,
vocab_emb_dp.  No second config exists.

Rank numbering (MindSpore's convention for the world layout; Megatron's order of groups):

    rank = stage * (dp * mp) + dp_rank * mp + mp_rank

Pipeline stages are contiguous blocks of world_size / pp ranks; inside a stage the device matrix is
(dp, mp) with mp innermost, so the ranks of one tensor-parallel group are neighbours.  dp2 x mp2 x pp2:

    stage 0: ranks 0 1 (dp_rank 0, mp 0/1), 2 3 (dp_rank 1)      stage 1: ranks 4 5, 6 7

Layers go to stages in contiguous blocks of n_layer / pp (stage s holds layers s*k .. s*k+k-1).
Pure Python (no MindSpore import): checked before any process starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mftasks.context import ParallelConfig
    from mftasks.model.config import GPT2Config

__all__ = ["RankPlace", "layout_problems", "place_of", "rank_of", "stage_layers"]


@dataclass(frozen=True)
class RankPlace:
    """One rank's coordinates in the layout."""

    rank: int
    stage: int
    """Pipeline stage, 0 .. pp-1."""
    dp_rank: int
    """Index of its data-parallel replica, 0 .. dp-1."""
    mp_rank: int
    """Index in its tensor-parallel group, 0 .. mp-1 (which slice of each split parameter it holds)."""
    pp: int
    """Number of stages (so a place knows whether it is first or last)."""

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.pp - 1


def rank_of(pc: ParallelConfig, stage: int, dp_rank: int, mp_rank: int) -> int:
    """The global rank at (stage, dp_rank, mp_rank)."""
    return stage * pc.data_parallel * pc.model_parallel + dp_rank * pc.model_parallel + mp_rank


def place_of(pc: ParallelConfig, rank: int) -> RankPlace:
    """The coordinates of global `rank` (inverse of rank_of)."""
    if not 0 <= rank < pc.world_size:
        raise ValueError(f"rank {rank} is outside the layout's world of {pc.world_size}")
    stage, within = divmod(rank, pc.data_parallel * pc.model_parallel)
    dp_rank, mp_rank = divmod(within, pc.model_parallel)
    return RankPlace(rank, stage, dp_rank, mp_rank, pc.pipeline_stage)


def stage_layers(pc: ParallelConfig, n_layer: int, stage: int) -> range:
    """The blocks (indices into transformer.h) that `stage` holds: a contiguous n_layer / pp of them."""
    per = n_layer // pc.pipeline_stage
    return range(stage * per, (stage + 1) * per)


def layout_problems(pc: ParallelConfig, config: GPT2Config, *, global_batch: int | None = None,
                    world_size: int | None = None) -> list[str]:
    """Every reason `pc` cannot split `config` (empty if none), each naming its field.

    global_batch: samples per optimizer step over all replicas (each dp replica gets global_batch / dp,
    cut into micro_batch_num micro-batches).  world_size: processes started (None = not checked).
    """
    dp, mp, pp, micro = pc.data_parallel, pc.model_parallel, pc.pipeline_stage, pc.micro_batch_num
    problems = []
    if config.n_head % mp:
        problems.append(f"model_parallel={mp}: n_head={config.n_head} is not divisible by it (each rank holds "
                        "n_head / model_parallel heads); pick a model_parallel that divides n_head")
    if config.n_embd % mp:
        problems.append(f"model_parallel={mp}: n_embd={config.n_embd} is not divisible by it")
    if not pc.vocab_emb_dp and config.vocab_size % mp:
        problems.append(f"model_parallel={mp}: vocab_size={config.vocab_size} is not divisible by it, and "
                        "vocab_emb_dp=False splits the embedding by vocabulary rows; set vocab_emb_dp: true "
                        "(replicated embedding) or pick a vocabulary size divisible by model_parallel")
    if config.n_layer % pp:
        problems.append(f"pipeline_stage={pp}: n_layer={config.n_layer} is not divisible by it (each stage "
                        "holds n_layer / pipeline_stage blocks)")
    if pp > 1 and micro < pp:
        problems.append(f"micro_batch_num={micro}: must be >= pipeline_stage={pp} (fewer micro-batches than "
                        "stages leaves stages idle for the whole step)")
    if global_batch is not None and global_batch % (dp * micro):
        problems.append(f"global batch {global_batch}: not divisible by data_parallel * micro_batch_num = "
                        f"{dp} * {micro} = {dp * micro}; each replica needs whole micro-batches of equal size")
    if world_size is not None and world_size != pc.world_size:
        problems.append(f"data_parallel * model_parallel * pipeline_stage = {dp} * {mp} * {pp} = "
                        f"{pc.world_size}, but the job has {world_size} process(es); make them equal")
    return problems
