"""Real tensor and pipeline parallelism on CPU: ranks started by the gang launcher train a tiny GPT-2 under
mp2, pp2 (micro 2), dp2 with optimizer_shard, dp2 x mp2 and mp2 x pp2, and must match one process on the
same global batches (20 steps: per-step losses within 1e-4 relative, merged final weights within 1e-4, eval
loss of a held-out batch before and after training), each rank holding only its part.

Two launches (2 ranks: mp2, pp2, dp2 + optimizer_shard; 4 ranks: dp2 x mp2 then mp2 x pp2), each writing
per-rank JSON/npz that every assertion here reads.  The rank program is tests/parallel/parity_rank.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mftasks.parallel.shards import merge_rank_states, shard_full_state

from conftest import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent / "parallel"))
import parity_rank  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# dp,mp,pp,micro,vocab_emb_dp[,optimizer_shard]: mp2 splits the vocabulary too
MP2, PP2, DP2_ZERO, MP2_LORA = "1,2,1,1,0", "1,1,2,2,1", "2,1,1,2,1,1", "1,2,1,1,0+lora"
DP2_MP2, MP2_PP2, MP2_PP2_LORA, PP4 = "2,2,1,2,1", "1,2,2,2,0", "1,2,2,2,0+lora", "1,1,4,4,1+L4"


def _launch(out: Path, nproc: int, *layouts: str) -> Path:
    argv = [sys.executable, "-m", "mftasks.cli", "launch", "--nproc-per-node", str(nproc), "--master-port",
            str(free_port()), "--log-dir", str(out / "log"), "--timeout", "400", "--",
            sys.executable, str(REPO / "tests" / "parallel" / "parity_rank.py"), str(out), *layouts]
    r = subprocess.run(argv, env=dict(os.environ, GLOG_v="3", PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=450)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return out


def _ranks(out: Path, spec: str) -> dict[int, dict]:
    folder = out / parity_rank.layout_tag(spec)
    runs = {}
    for f in sorted(folder.glob("rank_*.json")):
        run = json.loads(f.read_text())
        run["params"] = dict(np.load(f.with_suffix(".npz")))
        runs[run["rank"]] = run
    return runs


@pytest.fixture(scope="module")
def reference():
    return parity_rank.reference_run(generated=True)


@pytest.fixture(scope="module")
def lora_reference():
    return parity_rank.reference_run(lora=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("parallel2"), 2, MP2, PP2, DP2_ZERO, MP2_LORA)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("parallel4"), 4, DP2_MP2, MP2_PP2, MP2_PP2_LORA, PP4)


def _check_parity(runs: dict[int, dict], spec: str, reference: dict) -> None:
    pc, (_, n_layer) = parity_rank.layout_of(spec), parity_rank.options_of(spec)
    assert sorted(runs) == list(range(pc.world_size))
    ref = np.array(reference["losses"])
    for rank, run in runs.items():
        rel = np.abs(np.array(run["losses"]) - ref) / np.abs(ref)
        assert rel.max() < 1e-4, f"{spec} rank {rank}: losses {run['losses']} vs {list(ref)} (max rel {rel.max()})"
    assert ref[-1] < ref[0] - (0.03 if spec.endswith("+lora") else 0.5)  # it really trained (LoRA: adapters only)
    (ref_sum0, ref_tokens), (ref_sum1, _) = reference["eval"]
    for rank, run in runs.items():  # token-weighted eval loss of a held-out batch, before and after training
        (sum0, tokens0), (sum1, tokens1) = run["eval"]
        assert tokens0 == tokens1 == ref_tokens
        assert abs(sum0 / ref_sum0 - 1) < 1e-5 and abs(sum1 / ref_sum1 - 1) < 1e-4, (spec, rank, run["eval"])
    for d in range(pc.data_parallel):  # every replica ends with the weights of one process
        merged = merge_rank_states({r: run["params"] for r, run in runs.items()}, pc, parity_rank.tiny_config(n_layer),
                                   d)
        assert merged.keys() == reference["state"].keys()
        worst = max(float(np.abs(merged[n] - reference["state"][n]).max()) for n in merged)
        assert worst < 1e-4, f"{spec} replica {d}: merged weights differ from one process by {worst}"


def test_mp2_matches_one_process(two_ranks, reference):
    _check_parity(_ranks(two_ranks, MP2), MP2, reference)


def test_pp2_matches_one_process(two_ranks, reference):
    _check_parity(_ranks(two_ranks, PP2), PP2, reference)


def test_dp2_with_optimizer_shard_matches_one_process_holding_half_the_moments(two_ranks, reference):
    runs = _ranks(two_ranks, DP2_ZERO)
    _check_parity(runs, DP2_ZERO, reference)
    params = sum(int(np.prod(v.shape)) for v in reference["state"].values())
    for run in runs.values():  # each rank's AdamW moments cover half of the (padded) parameters
        assert run["moment_elements"] <= params // 2 + 2, (run["moment_elements"], params)
    for run in _ranks(two_ranks, MP2).values():  # without optimizer_shard: moments for every element it holds
        assert run["moment_elements"] == sum(int(np.prod(s)) for s in run["shapes"].values())


@pytest.mark.parametrize("spec", [MP2_LORA, MP2_PP2_LORA])
def test_lora_adapters_split_like_their_layers_match_one_process(two_ranks, four_ranks, lora_reference, spec):
    runs = _ranks(two_ranks if spec == MP2_LORA else four_ranks, spec)
    _check_parity(runs, spec, lora_reference)
    config, r = parity_rank.tiny_config(), parity_rank.lora_config().rank
    C, init = config.n_embd, parity_rank.initial_state(config, lora=True)
    for run in runs.values():
        h = f"transformer.h.{run['place'][0]}"  # n_layer 2: stage s holds block s (block 0 without pp)
        shapes = {n: tuple(s) for n, s in run["shapes"].items()}
        assert shapes[f"{h}.attn.c_attn.lora_b_q"] == (C // 2, r) and shapes[f"{h}.attn.c_attn.lora_a_q"] == (r, C)
        assert shapes[f"{h}.mlp.c_proj.lora_a_mlp_proj"] == (r, 2 * C)
        assert shapes[f"{h}.mlp.c_proj.lora_b_mlp_proj"] == (C, r)
        start = shard_full_state(init, parity_rank.layout_of(spec), config, run["rank"])
        frozen = [n for n in run["params"] if ".lora_" not in n]
        assert frozen and all(np.array_equal(run["params"][n], start[n]) for n in frozen)  # only adapters train


def test_pp4_with_middle_stages_matches_one_process(four_ranks):
    runs = _ranks(four_ranks, PP4)
    _check_parity(runs, PP4, parity_rank.reference_run(n_layer=4))
    for rank, run in runs.items():  # 4 layers over 4 stages: rank s holds block s only
        assert {n.split(".")[2] for n in run["shapes"] if ".h." in n} == {str(rank)}
        assert ("transformer.wte.embedding_table" in run["shapes"]) == (rank in (0, 3))  # first + last
    wte = "transformer.wte.embedding_table"  # the tied copies stay identical (gradient summed over emb_0-3)
    assert np.array_equal(runs[0]["params"][wte], runs[3]["params"][wte])


def test_dp2_mp2_matches_one_process(four_ranks, reference):
    _check_parity(_ranks(four_ranks, DP2_MP2), DP2_MP2, reference)


def test_mp2_pp2_matches_one_process(four_ranks, reference):
    _check_parity(_ranks(four_ranks, MP2_PP2), MP2_PP2, reference)


@pytest.mark.parametrize("spec", [MP2, DP2_MP2])
def test_tensor_parallel_greedy_generation_matches_one_process(two_ranks, four_ranks, reference, spec):
    runs = _ranks(two_ranks if spec == MP2 else four_ranks, spec)
    for rank, run in runs.items():  # every rank of the mp group gets the 1-process tokens, cached or not
        assert run["generated"] == reference["generated"], (spec, rank)
    assert reference["generated"]["cached"] == reference["generated"]["recompute"]


def test_scatter_and_gather_regions_forward_and_backward(two_ranks):
    for rank, run in _ranks(two_ranks, MP2).items():
        got = run["scatter_gather"]
        x, w = np.array(got["x"]), np.array(got["w"])
        k = np.array([1.0, 1.0, 2.0, 2.0])  # columns 0-1 belong to mp rank 0 (x1), 2-3 to mp rank 1 (x2)
        assert got["loss"] == pytest.approx(float((x * k * w).sum()), rel=1e-6), rank
        np.testing.assert_allclose(got["dx"], w * k, rtol=1e-6, err_msg=f"rank {rank}")


def test_each_rank_holds_only_its_part(two_ranks, four_ranks, reference):
    full = {n: tuple(v.shape) for n, v in reference["state"].items()}
    C = parity_rank.tiny_config().n_embd
    for rank, run in _ranks(two_ranks, MP2).items():  # mp2, vocabulary split: half the columns / rows
        shapes = {n: tuple(s) for n, s in run["shapes"].items()}
        assert shapes.keys() == full.keys()
        assert shapes["transformer.h.0.attn.c_attn.weight"] == (3 * C // 2, C)
        assert shapes["transformer.h.0.mlp.c_fc.weight"] == (2 * C, C)
        assert shapes["transformer.h.0.attn.c_proj.weight"] == (C, C // 2)
        assert shapes["transformer.h.0.mlp.c_proj.weight"] == (C, 2 * C)
        assert shapes["transformer.h.0.attn.c_proj.bias"] == (C,)  # replicated
        assert shapes["transformer.wte.embedding_table"] == (full["transformer.wte.embedding_table"][0] // 2, C)
    pp2 = _ranks(two_ranks, PP2)
    layers = {r: {n.split(".")[2] for n in run["shapes"] if ".h." in n} for r, run in pp2.items()}
    assert layers == {0: {"0"}, 1: {"1"}}  # n_layer 2: one block per stage
    assert "transformer.wpe.embedding_table" in pp2[0]["shapes"] and "transformer.ln_f.gamma" not in pp2[0]["shapes"]
    assert "transformer.ln_f.gamma" in pp2[1]["shapes"] and "transformer.wpe.embedding_table" not in pp2[1]["shapes"]
    for rank, run in _ranks(four_ranks, MP2_PP2).items():  # stage = rank // 2, mp_rank = rank % 2
        assert {n.split(".")[2] for n in run["shapes"] if ".h." in n} == {str(rank // 2)}
        assert run["shapes"][f"transformer.h.{rank // 2}.attn.c_attn.weight"] == [3 * C // 2, C]
        assert run["place"] == [rank // 2, 0, rank % 2]
