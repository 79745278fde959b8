"""parallel_state: the communication groups of this rank, made from the layout (Megatron's
`initialize_model_parallel` / `get_tensor_model_parallel_group()`...).

Groups, named `<role>_<member ranks>` (e.g. `tp_0-1`, `pp_1-3`: the same on every member, and one
process may use several layouts in turn); a group of one rank is not created and reads as None, and the
operators that would use it do nothing:

- tensor (model) parallel `tp_`: the mp ranks of one stage and replica;
- data parallel `dp_`: the dp ranks holding the same slice of the same stage;
- pipeline neighbours `pp_`: this stage's rank and the same (dp, mp) place on stage + 1 (activations go
  forward and their gradients back through it);
- embedding `emb_`: the first and last stage's rank of one (dp, mp) place, which both hold the tied word
  embedding (its gradient is summed over it, as Megatron does); with pp = 2 it is the `pp_` pair;
- model `mdl_`: every rank of one replica (mp x pp), for the global gradient norm.

On CPU (dynamic cluster, mccl) AllReduce works on such sub-groups; AllGather/Broadcast only on the world
group, so nothing here relies on them.  Only groups this rank belongs to are created (CPU-tested with
2 and 4 ranks; Ascend/GPU untested).
"""
from __future__ import annotations

from dataclasses import dataclass

from mftasks.context import ParallelConfig

from .layout import RankPlace, place_of, rank_of

__all__ = [
    "ParallelState", "get_data_parallel_group", "get_embedding_group", "get_model_group", "get_parallel_state",
    "get_tensor_model_parallel_group", "get_tensor_model_parallel_rank", "get_tensor_model_parallel_world_size",
    "initialize_model_parallel", "group_plan",
]


@dataclass(frozen=True)
class ParallelState:
    """This rank's place and the names of the groups it communicates in (None: a group of one)."""

    layout: ParallelConfig
    place: RankPlace
    tp_group: str | None = None
    dp_group: str | None = None
    next_stage_group: str | None = None
    """Shared with stage + 1 (None on the last stage)."""
    prev_stage_group: str | None = None
    """Shared with stage - 1 (None on the first stage)."""
    embedding_group: str | None = None
    """First + last stage (None unless pipeline_stage > 1 and this rank is on one of them)."""
    model_group: str | None = None

    @property
    def mp_size(self) -> int:
        return self.layout.model_parallel

    @property
    def mp_rank(self) -> int:
        return self.place.mp_rank

    @property
    def vocab_parallel(self) -> bool:
        """Whether the word embedding (and tied head) is split by vocabulary rows across the mp group."""
        return self.layout.model_parallel > 1 and not self.layout.vocab_emb_dp


def group_plan(pc: ParallelConfig, rank: int) -> dict[str, tuple[str, list[int]] | None]:
    """{role: (group name, member ranks) or None} for `rank`; pure, used by initialize_model_parallel."""
    p = place_of(pc, rank)
    dp, mp, pp = pc.data_parallel, pc.model_parallel, pc.pipeline_stage

    def group(role, ranks):
        ranks = sorted(ranks)
        return (f"{role}_{'-'.join(map(str, ranks))}", ranks) if len(ranks) > 1 else None

    def pair(stage):  # this (dp, mp) place on `stage` and stage + 1
        return group("pp", [rank_of(pc, stage, p.dp_rank, p.mp_rank), rank_of(pc, stage + 1, p.dp_rank, p.mp_rank)])

    plan = {
        "tp_group": group("tp", [rank_of(pc, p.stage, p.dp_rank, m) for m in range(mp)]),
        "dp_group": group("dp", [rank_of(pc, p.stage, d, p.mp_rank) for d in range(dp)]),
        "model_group": group("mdl", [rank_of(pc, s, p.dp_rank, m) for s in range(pp) for m in range(mp)]),
        "next_stage_group": pair(p.stage) if p.stage < pp - 1 else None,
        "prev_stage_group": pair(p.stage - 1) if p.stage > 0 else None,
        "embedding_group": None,
    }
    if pp > 1 and (p.is_first_stage or p.is_last_stage):
        plan["embedding_group"] = (pair(0) if pp == 2 else  # the neighbour pair already is {first, last}
                                   group("emb", [rank_of(pc, 0, p.dp_rank, p.mp_rank),
                                                 rank_of(pc, pp - 1, p.dp_rank, p.mp_rank)]))
    return plan


_STATE: ParallelState | None = None
_CREATED: set[str] = set()  # groups made in this process (a name fixes its members)


def initialize_model_parallel(pc: ParallelConfig, rank: int | None = None) -> ParallelState:
    """Create this rank's groups (MindSpore communication must be initialised when world size > 1) and
    remember them for the get_* functions.  Safe to call again with the same layout."""
    global _STATE
    from mftasks.distributed import rank_and_world

    if rank is None:
        rank, world = rank_and_world()
        if world != pc.world_size:
            raise ValueError(f"the layout needs {pc.world_size} ranks but this job has {world}")
    if _STATE is not None and _STATE.layout == pc and _STATE.place.rank == rank:
        return _STATE
    plan = group_plan(pc, rank)
    for entry in plan.values():
        if entry is not None and entry[0] not in _CREATED:
            from mindspore.communication import create_group

            create_group(*entry)
            _CREATED.add(entry[0])
    _STATE = ParallelState(pc, place_of(pc, rank), **{k: (v[0] if v else None) for k, v in plan.items()})
    return _STATE


def get_parallel_state() -> ParallelState:
    if _STATE is None:
        raise RuntimeError("initialize_model_parallel() has not been called in this process")
    return _STATE


def get_tensor_model_parallel_group() -> str | None:
    return get_parallel_state().tp_group


def get_tensor_model_parallel_rank() -> int:
    return get_parallel_state().mp_rank


def get_tensor_model_parallel_world_size() -> int:
    return get_parallel_state().mp_size


def get_data_parallel_group() -> str | None:
    return get_parallel_state().dp_group


def get_embedding_group() -> str | None:
    return get_parallel_state().embedding_group


def get_model_group() -> str | None:
    return get_parallel_state().model_group
