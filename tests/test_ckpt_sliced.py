"""Sliced (model / pipeline parallel) checkpoints: merge and transform with MindSpore's own APIs.

MindSpore on CPU cannot train sliced, so these tests lay out what an Ascend run writes: real tiny GPT-2
weights cut with numpy into per-rank checkpoints (with manifests, plus optimizer entries the merge must
drop) and strategy files built with MindSpore's strategy protobuf.  Every merge must give back the
unsliced weights bit for bit.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from mftasks import checkpoint as ckpt
from mftasks.ckpt import load_weights, merge_replicas, merge_set, merge_sliced, set_of, transform, write_strategy
from mftasks.errors import CheckpointError, OutputExistsError
from mftasks.files import atomic_write_json, sha256_file
from mftasks.model import GPT2Config, GPT2LMHeadModel

CFG = GPT2Config.from_name("gpt2_tiny", vocab_size=300, dropout=0.0, attention_dropout=0.0)

# name suffix -> tensor map, per device layout (tensor map entries count device axes from the right).
CASES = {
    "mp2": ([2], {"attn.c_attn.weight": [0, -1], "attn.c_attn.bias": [0], "mlp.c_fc.weight": [-1, 0],
                  "mlp.c_proj.weight": [0, -1]}),
    "mp4": ([4], {"attn.c_attn.weight": [-1, 0], "mlp.c_fc.weight": [0, -1], "mlp.c_fc.bias": [0],
                  "wte.embedding_table": [0, -1], "attn.c_proj.weight": [-1, 0]}),
    "dp2xmp2": ([2, 2], {"attn.c_attn.weight": [0, -1], "mlp.c_fc.weight": [-1, 0], "wte.embedding_table": [1, -1],
                         "ln_f.gamma": [1]}),
}


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    ms.set_seed(3)
    return {n: p.asnumpy() for n, p in GPT2LMHeadModel(CFG).parameters_and_names()}


def slice_of(full: np.ndarray, dev_matrix, tensor_map, rank: int) -> np.ndarray:
    """Rank's slice: rank is the row-major index into dev_matrix; tensor_map counts axes from the right."""
    coord = np.unravel_index(rank, dev_matrix)
    index = []
    for dim, m in enumerate(tensor_map):
        if m < 0:
            index.append(slice(None))
            continue
        axis = len(dev_matrix) - 1 - m
        size = full.shape[dim] // dev_matrix[axis]
        index.append(slice(coord[axis] * size, (coord[axis] + 1) * size))
    return np.ascontiguousarray(full[tuple(index)])


def layouts_of(case: str, names: dict) -> dict[str, tuple]:
    dev, maps = CASES[case]
    out = {}
    for name, value in names.items():
        tmap = next((m for suffix, m in maps.items() if name.endswith(suffix)), [-1] * value.ndim)
        out[name] = (dev, tmap)
    return out


def write_rank(output_dir: Path, rank: int, world: int, tensors: dict, step: int = 2) -> Path:
    """A rank checkpoint as the Trainer lays it out (manifest included), with an optimizer entry and a counter."""
    folder = ckpt.rank_dir(output_dir, rank)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ckpt.file_name("mindformers", rank, 1, step)
    items = [{"name": n, "data": ms.Tensor(v)} for n, v in tensors.items()]
    first = next(iter(tensors))
    items += [{"name": f"adam_m.{first}", "data": ms.Tensor(np.zeros_like(tensors[first]))},
              {"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))}]
    ms.save_checkpoint(items, str(path))
    atomic_write_json(ckpt.manifest_path_of(path), {
        "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "file": path.name, "rank": rank, "epoch": 1,
        "step_in_epoch": step, "size": path.stat().st_size, "sha256": sha256_file(path), "created": time.time(),
        "prefix": "mindformers", "stage": "train", "kind": "full", "global_step": step, "world_size": world,
        "loss": 1.0, "model_config": CFG.to_dict(), "pet_method": "", "training_args": {}, "dataset_id": "d" * 64,
        "dataset": "/data", "tokenizer": {"path": "/t.model", "sha256": "t" * 64}, "parent": None})
    return path


def write_sliced_run(output_dir: Path, weights: dict, case: str) -> Path:
    """OUTPUT/checkpoint/rank_N/... and OUTPUT/strategy/ckpt_strategy_rank_N.ckpt for one layout."""
    layouts = layouts_of(case, weights)
    world = int(np.prod(CASES[case][0]))
    for rank in range(world):
        write_rank(output_dir, rank, world, {n: slice_of(w, *layouts[n], rank) for n, w in weights.items()})
        write_strategy(output_dir / "strategy" / f"ckpt_strategy_rank_{rank}.ckpt", layouts)
    return output_dir


def assert_same(path: Path, weights: dict) -> None:
    merged = {n: p.asnumpy() for n, p in load_weights(path).items()}
    assert merged.keys() == weights.keys()
    for n, w in weights.items():
        assert merged[n].dtype == w.dtype and np.array_equal(merged[n], w), n


@pytest.mark.parametrize("case", list(CASES))
def test_merge_sliced_gives_back_the_unsliced_weights(weights, tmp_path, case):
    run = write_sliced_run(tmp_path / "output", weights, case)
    cset = set_of(run)
    assert len(cset.files) == int(np.prod(CASES[case][0])) and len(cset.strategy_files) == len(cset.files)
    target = merge_sliced(cset.files, cset.strategy_files, tmp_path / "full.ckpt")
    assert_same(target, weights)  # optimizer entries and counters dropped, every weight bit-exact
    m = ckpt.read_manifest(target)
    assert m["kind"] == "full" and m["model_config"] == CFG.to_dict() and m["global_step"] == 2
    assert [e["sha256"] for e in m["merged_from"]] == [i.sha256 for i in cset.ranks.values()]
    assert m["strategy_files"][0]["sha256"] == sha256_file(cset.strategy_files[0])
    assert not ckpt.verify(target)


def test_merge_set_picks_sliced_and_merge_replicas_refuses_slices(weights, tmp_path):
    run = write_sliced_run(tmp_path / "output", weights, "mp2")
    assert_same(merge_set(run, tmp_path / "full.safetensors"), weights)
    with pytest.raises(CheckpointError, match=r"slices, not replicas.*split 8 parameter\(s\)"):
        merge_replicas(run, tmp_path / "x.ckpt")


def test_merge_sliced_pipeline_stages(weights, tmp_path):
    """2 stages x 2-way model parallel: each stage writes its own strategy file; wte is shared by both."""
    stage_names = [
        [n for n in weights if n.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0."))],
        [n for n in weights if n.startswith(("transformer.wte", "transformer.h.1.", "transformer.ln_f"))],
    ]
    files, strategies = [], []
    for stage, names in enumerate(stage_names):
        layouts = {n: ([2], [0, -1] if n.endswith("c_attn.weight") else [-1] * weights[n].ndim) for n in names}
        strategies.append(write_strategy(tmp_path / f"strategy_stage_{stage}.ckpt", layouts, stage=stage))
        for local in range(2):
            rank = stage * 2 + local
            files.append(write_rank(tmp_path / "output", rank, 4,
                                    {n: slice_of(weights[n], *layouts[n], local) for n in names}))
    assert_same(merge_sliced(files, strategies, tmp_path / "full.ckpt"), weights)


def test_transform_to_another_layout_and_back(weights, tmp_path):
    run = write_sliced_run(tmp_path / "output", weights, "mp2")
    cset = set_of(run)
    dst = write_strategy(tmp_path / "mp4.ckpt", layouts_of("mp4", weights))
    out4 = transform(cset.files, cset.strategy_files, dst, tmp_path / "as_mp4")
    four = set_of(out4)
    assert four.world_size == 4 and four.manifest["transformed_from"]["files"][1]["sha256"] == cset.ranks[1].sha256
    layouts4 = layouts_of("mp4", weights)
    for rank, path in enumerate(four.files):  # each new rank holds exactly its numpy-cut slice
        got = load_weights(path, model_only=True)
        assert all(np.array_equal(got[n].asnumpy(), slice_of(w, *layouts4[n], rank)) for n, w in weights.items())
    assert_same(merge_set(out4, tmp_path / "full.ckpt"), weights)
    whole = set_of(transform(cset.files, cset.strategy_files, None, tmp_path / "unsliced"))
    assert whole.world_size == 1 and not whole.strategy_files
    got = load_weights(whole.files[0], model_only=True)
    assert all(np.array_equal(got[n].asnumpy(), w) for n, w in weights.items())
    with pytest.raises(OutputExistsError):
        transform(cset.files, cset.strategy_files, None, tmp_path / "unsliced")


def test_bare_rank_files_without_manifests_merge_to_an_unverified_file(weights, tmp_path):
    """Rank files no manifest vouches for merge, but the result gets no manifest either: it stays unverified."""
    layouts = layouts_of("mp2", weights)
    files = []
    for rank in range(2):
        files.append(tmp_path / f"foreign_rank_{rank}.ckpt")
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(slice_of(w, *layouts[n], rank))} for n, w in weights.items()],
                           str(files[-1]))
    strategy = write_strategy(tmp_path / "s.ckpt", layouts)
    target = merge_sliced(files, [strategy], tmp_path / "full.ckpt", model_config=CFG)
    assert_same(target, weights)
    assert not ckpt.manifest_path_of(target).exists()
    assert "no manifest" in ckpt.verify(target)[0]


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_strategy_file(weights, tmp_path):
    cset = set_of(write_sliced_run(tmp_path / "output", weights, "mp2"))
    with pytest.raises(CheckpointError, match=r"strategy file .*nowhere\.ckpt does not exist"):
        merge_sliced(cset.files, [tmp_path / "nowhere.ckpt"], tmp_path / "full.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a MindSpore strategy file"):
        merge_sliced(cset.files, [garbage], tmp_path / "full.ckpt")
    assert not (tmp_path / "full.ckpt").exists()


def test_strategy_that_does_not_match_the_shards(weights, tmp_path):
    cset = set_of(write_sliced_run(tmp_path / "output", weights, "mp2"))
    four = write_strategy(tmp_path / "mp4.ckpt", layouts_of("mp4", weights))
    with pytest.raises(CheckpointError,
                       match=r"spans 4 device\(s\) \(stage 0: dev_matrix \[4\]\) but 2 rank file\(s\)"):
        merge_sliced(cset.files, [four], tmp_path / "full.ckpt")
    partial = write_strategy(tmp_path / "other_model.ckpt",
                             {n: v for n, v in layouts_of("mp2", weights).items() if ".h.1." not in n})
    with pytest.raises(CheckpointError, match=r"12 parameter\(s\) of the rank files are not in the strategy, e\.g\. "
                                              r"transformer\.h\.1\."):
        merge_sliced(cset.files, [partial], tmp_path / "full.ckpt")
    # dim 1 of c_fc was cut, but this strategy says dim 0: merged shape (512, 32) is not the model's (256, 64)
    wrong = write_strategy(tmp_path / "wrong_axis.ckpt", {**layouts_of("mp2", weights), **{
        f"transformer.h.{i}.mlp.c_fc.weight": ([2], [0, -1]) for i in range(CFG.n_layer)}})
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight: the merged checkpoint has shape "
                                              r"\(512, 32\), the model gpt2_tiny expects \(256, 64\)"):
        merge_sliced(cset.files, [wrong], tmp_path / "full.ckpt")
    assert not (tmp_path / "full.ckpt").exists()


def test_slice_shape_mismatch_names_the_parameter_and_both_shapes(weights, tmp_path):
    layouts = layouts_of("mp2", weights)
    files = []
    for rank in range(2):
        tensors = {n: slice_of(w, *layouts[n], rank) for n, w in weights.items()}
        if rank == 1:
            tensors["transformer.h.0.attn.c_attn.weight"] = tensors["transformer.h.0.attn.c_attn.weight"][:95]
        files.append(write_rank(tmp_path / "output", rank, 2, tensors))
    strategy = write_strategy(tmp_path / "s.ckpt", layouts)
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.attn\.c_attn\.weight: slice shapes differ: rank 0 "
                                              r"has \(96, 64\) but rank 1 has \(95, 64\)"):
        merge_sliced(files, [strategy], tmp_path / "full.ckpt")


def test_rank_files_from_different_steps_or_out_of_order(weights, tmp_path):
    layouts = layouts_of("mp2", weights)
    strategy = write_strategy(tmp_path / "s.ckpt", layouts)
    files = [write_rank(tmp_path / "output", r, 2, {n: slice_of(w, *layouts[n], r) for n, w in weights.items()},
                        step=2 + 2 * r) for r in range(2)]
    with pytest.raises(CheckpointError, match=r"ranks from different steps: mindformers_rank_0-1_2\.ckpt is step 2, "
                                              r"mindformers_rank_1-1_4\.ckpt is step 4"):
        merge_sliced(files, [strategy], tmp_path / "full.ckpt")
    with pytest.raises(CheckpointError, match=r"its manifest says rank 1 but it was given as rank 0: list the rank "
                                              "files in rank order"):
        merge_sliced(files[::-1], [strategy], tmp_path / "full.ckpt")


def test_output_exists_and_failed_merge_leaves_nothing(weights, tmp_path, monkeypatch):
    import mftasks.ckpt.sliced as sliced

    cset = set_of(write_sliced_run(tmp_path / "output", weights, "mp2"))
    taken = tmp_path / "taken.ckpt"
    taken.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="taken.ckpt already exists"):
        merge_sliced(cset.files, cset.strategy_files, taken)
    assert taken.read_bytes() == b"keep me"

    def broken(weights, path):
        Path(path).write_bytes(b"partial")
        raise OSError("injected write failure")

    monkeypatch.setattr(sliced, "save_weights", broken)
    folder = tmp_path / "merged"
    folder.mkdir()
    with pytest.raises(OSError, match="injected"):
        merge_sliced(cset.files, cset.strategy_files, folder / "full.ckpt")
    assert os.listdir(folder) == []
    assert json.loads(ckpt.manifest_path_of(cset.files[0]).read_text())["rank"] == 0  # sources untouched


def test_a_truncated_rank_file_is_named(weights, tmp_path):
    cset = set_of(write_sliced_run(tmp_path / "output", weights, "mp2"))
    victim = cset.files[1]
    os.chmod(victim, 0o600)
    os.truncate(victim, victim.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=rf"{victim.name}: \d+ bytes, manifest says \d+ \(truncated or changed\)"):
        merge_sliced(cset.files, cset.strategy_files, tmp_path / "full.ckpt")
    assert not (tmp_path / "full.ckpt").exists()
