"""mftasks.parallel without ranks: rank numbering, layout problems, group plans, slice/merge of parameters,
and one rank's model built in this process (pipeline stages need no communication to be built)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mftasks.context import ParallelConfig
from mftasks.errors import ConfigError
from mftasks.model.config import GPT2Config
from mftasks.parallel.groups import group_plan
from mftasks.parallel.layout import layout_problems, place_of, rank_of, stage_layers
from mftasks.parallel.shards import merge_rank_states, param_stages, shard_full_state, split_axis


def _cfg(**kw):
    base = dict(name="custom", n_layer=4, n_embd=64, n_head=4, seq_length=16, vocab_size=96, dropout=0.0,
                attention_dropout=0.0)
    return GPT2Config(**{**base, **kw})


def test_rank_numbering_is_stage_major_with_mp_innermost():
    pc = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2)
    places = [(p.stage, p.dp_rank, p.mp_rank) for p in map(lambda r: place_of(pc, r), range(8))]
    assert places == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    assert all(rank_of(pc, *place) == r for r, place in enumerate(places))
    assert list(stage_layers(pc, 4, 1)) == [2, 3]


def test_every_layout_problem_is_listed_at_once_naming_its_field():
    pc = ParallelConfig(data_parallel=2, model_parallel=3, pipeline_stage=3, micro_batch_num=3, vocab_emb_dp=False)
    problems = layout_problems(pc, _cfg(n_embd=64, n_head=4, vocab_size=100, n_layer=4), global_batch=8,
                               world_size=4)
    text = "\n".join(problems)
    for needle in ("n_head=4", "n_embd=64", "vocab_size=100", "n_layer=4", "global batch 8", "= 18, but the job has 4"):
        assert needle in text, (needle, problems)
    assert len(problems) == 6
    # micro_batch_num < pp: ParallelConfig itself refuses it, and so does layout_problems for any layout object
    with pytest.raises(ConfigError, match="micro_batch_num=1"):
        ParallelConfig(pipeline_stage=2, micro_batch_num=1)
    few = SimpleNamespace(data_parallel=1, model_parallel=1, pipeline_stage=2, micro_batch_num=1, vocab_emb_dp=True,
                          world_size=2)
    assert [p for p in layout_problems(few, _cfg()) if p.startswith("micro_batch_num=1: must be >= pipeline_stage=2")]
    assert layout_problems(ParallelConfig(model_parallel=2, pipeline_stage=2, micro_batch_num=2), _cfg(),
                           global_batch=8, world_size=4) == []


def test_vocab_split_is_checked_only_without_vocab_emb_dp():
    cfg = _cfg(vocab_size=97)
    assert layout_problems(ParallelConfig(model_parallel=2), cfg) == []
    assert "vocab_size=97" in layout_problems(ParallelConfig(model_parallel=2, vocab_emb_dp=False), cfg)[0]


def test_group_plan_of_dp2_mp2_pp2():
    pc = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2)
    plan = group_plan(pc, 5)  # stage 1, dp_rank 0, mp_rank 1
    assert plan["tp_group"] == ("tp_4-5", [4, 5])
    assert plan["dp_group"] == ("dp_5-7", [5, 7])
    assert plan["prev_stage_group"] == ("pp_1-5", [1, 5]) and plan["next_stage_group"] is None
    assert plan["embedding_group"] == plan["prev_stage_group"]
    assert plan["model_group"] == ("mdl_0-1-4-5", [0, 1, 4, 5])
    assert group_plan(ParallelConfig(), 0) == dict.fromkeys(plan)  # one process: no groups


@pytest.mark.parametrize("vocab_emb_dp", [True, False])
def test_slices_merge_back_exactly(vocab_emb_dp):
    cfg = _cfg()
    pc = ParallelConfig(model_parallel=2, pipeline_stage=2, micro_batch_num=2, vocab_emb_dp=vocab_emb_dp)
    rng = np.random.default_rng(0)
    C, V = cfg.n_embd, cfg.vocab_size
    full = {"transformer.wte.embedding_table": rng.normal(size=(V, C)),
            "transformer.wpe.embedding_table": rng.normal(size=(cfg.seq_length, C)),
            "transformer.ln_f.gamma": rng.normal(size=(C,))}
    for i in range(cfg.n_layer):
        full |= {f"transformer.h.{i}.attn.c_attn.weight": rng.normal(size=(3 * C, C)),
                 f"transformer.h.{i}.attn.c_attn.bias": rng.normal(size=(3 * C,)),
                 f"transformer.h.{i}.attn.c_proj.weight": rng.normal(size=(C, C)),
                 f"transformer.h.{i}.attn.c_proj.bias": rng.normal(size=(C,)),
                 f"transformer.h.{i}.mlp.c_fc.weight": rng.normal(size=(4 * C, C)),
                 f"transformer.h.{i}.mlp.c_proj.weight": rng.normal(size=(C, 4 * C))}
    states = {r: shard_full_state(full, pc, cfg, r) for r in range(pc.world_size)}
    merged = merge_rank_states(states, pc, cfg)
    assert merged.keys() == full.keys() and all(np.array_equal(merged[k], full[k]) for k in full)
    # rank 1 = stage 0, mp_rank 1: its heads' q, k and v rows of the fused c_attn; half of c_fc's rows
    qkv = states[1]["transformer.h.0.attn.c_attn.weight"]
    full_qkv = full["transformer.h.0.attn.c_attn.weight"]
    h = C // 2
    assert np.array_equal(qkv, np.concatenate([full_qkv[i * C + h:(i + 1) * C] for i in range(3)]))
    assert states[1]["transformer.h.0.mlp.c_proj.weight"].shape == (C, 2 * C)
    assert set(n.split(".")[2] for n in states[2] if ".h." in n) == {"2", "3"}  # stage 1 holds layers 2, 3
    assert "transformer.wpe.embedding_table" not in states[2] and "transformer.ln_f.gamma" not in states[0]
    assert states[2]["transformer.wte.embedding_table"].shape == ((V, C) if vocab_emb_dp else (V // 2, C))
    assert param_stages("transformer.wte.embedding_table", pc, cfg) == (0, 1)
    assert split_axis("transformer.h.0.attn.c_proj.bias", pc) is None
    with pytest.raises(ValueError, match="missing"):
        merge_rank_states({r: s for r, s in states.items() if r != 3}, pc, cfg)


def test_a_later_stage_builds_only_its_blocks_named_by_global_index():
    from mftasks.parallel.groups import ParallelState
    from mftasks.parallel.model import build_rank_model

    pc = ParallelConfig(pipeline_stage=2, micro_batch_num=2)
    cfg = _cfg()
    last = build_rank_model(cfg, ParallelState(pc, place_of(pc, 1)))
    names = {p.name for p in last.get_parameters()}
    assert {n.split(".")[2] for n in names if ".h." in n} == {"2", "3"}
    assert "transformer.ln_f.gamma" in names and "transformer.wte.embedding_table" in names
    assert "transformer.wpe.embedding_table" not in names
    first = build_rank_model(cfg, ParallelState(pc, place_of(pc, 0)))
    assert {n.split(".")[2] for n in (p.name for p in first.get_parameters()) if ".h." in n} == {"0", "1"}
    assert len(last.transformer.h) == 2 and last.transformer.h[0] is list(last.transformer.h)[0]
