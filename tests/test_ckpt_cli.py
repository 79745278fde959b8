"""`mftasks ckpt ...` through its own parser: list, verify, merge, merge-sliced, merge-lora, convert, import-hf."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from conftest import train_base_and_adapter
from mftasks import checkpoint as ckpt
from mftasks.ckpt import hf_gpt2_table, load_weights, write_strategy
from mftasks.ckpt.cli import add_commands
from mftasks.errors import CheckpointError, MftasksError, OutputExistsError
from mftasks.model import GPT2Config



def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["ckpt", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, tiny_finetune_dataset) -> Path:
    """Two data-parallel-style ranks of a 2-step train run, and a 1-step LoRA adapter on rank 0."""
    out = train_base_and_adapter(tmp_path_factory.mktemp("ckpt_cli") / "output", tiny_dataset, tiny_finetune_dataset)
    rank0 = ckpt.rank_dir(out, 0) / "mindformers_rank_0-1_2.ckpt"
    body = dict(ckpt.read_manifest(rank0), world_size=2)
    ckpt.manifest_path_of(rank0).write_text(json.dumps(body))
    rank1 = ckpt.rank_dir(out, 1) / "mindformers_rank_1-1_2.ckpt"
    rank1.parent.mkdir(parents=True)
    shutil.copyfile(rank0, rank1)
    ckpt.manifest_path_of(rank1).write_text(json.dumps(dict(body, rank=1, file=rank1.name)))
    return out


def test_list_shows_each_set(trained, capsys):
    assert run("list", trained) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["STEP", "PREFIX", "STAGE", "KIND", "RANKS", "SIZE", "VERIFIED"]
    assert lines[1].split()[:5] == ["2", "mindformers", "train", "full", "2/2"] and lines[1].endswith("yes")
    assert lines[2].split()[:5] == ["1", "mindformers_lora", "lora", "lora_adapter", "1/1"]


def test_verify_a_file_and_an_output_dir(trained, tmp_path, capsys):
    assert run("verify", ckpt.rank_dir(trained, 1) / "mindformers_rank_1-1_2.ckpt") == 0
    assert run("verify", trained) == 0
    assert "ok  mindformers step 2 (2/2 ranks)" in capsys.readouterr().out
    broken = Path(shutil.copytree(trained, tmp_path / "broken"))
    victim = ckpt.rank_dir(broken, 1) / "mindformers_rank_1-1_2.ckpt"
    os.chmod(victim, 0o600)
    os.truncate(victim, 1000)
    assert run("verify", broken) == 1
    out = capsys.readouterr().out
    assert "FAILED  mindformers step 2 (2/2 ranks)" in out and "truncated or changed" in out
    shutil.rmtree(ckpt.rank_dir(broken, 1))
    assert run("verify", broken) == 1
    assert "rank 1 of 2 is missing" in capsys.readouterr().out


def test_merge_then_merge_lora_twice_then_convert(trained, tmp_path, capsys):
    full = tmp_path / "full.ckpt"
    assert run("merge", trained, "--output", full, "--prefix", "mindformers") == 0
    assert ckpt.read_manifest(full)["merged_from"][1]["rank"] == 1
    with pytest.raises(OutputExistsError):
        run("merge", trained, "--output", full, "--prefix", "mindformers")
    adapter = ckpt.rank_dir(trained, 0) / "mindformers_lora_rank_0-1_1.ckpt"
    base = ckpt.rank_dir(trained, 0) / "mindformers_rank_0-1_2.ckpt"
    merged = tmp_path / "merged.ckpt"
    assert run("merge-lora", "--base", base, "--adapter", adapter, "--output", merged) == 0
    assert run("merge-lora", "--base", base, "--adapter", adapter, "--output", merged) == 0
    out = capsys.readouterr().out
    assert f"merged: {merged}" in out and f"already merged: {merged} holds adapter" in out
    assert run("convert", merged, tmp_path / "merged.safetensors") == 0
    assert not ckpt.verify(tmp_path / "merged.safetensors")
    with pytest.raises(CheckpointError, match="is a lora_adapter checkpoint; the base must be full"):
        run("merge-lora", "--base", adapter, "--adapter", adapter, "--output", tmp_path / "x.ckpt")


def test_merge_sliced_and_import_hf(trained, tmp_path, capsys):
    base = ckpt.rank_dir(trained, 0) / "mindformers_rank_0-1_2.ckpt"
    weights = {n: p.asnumpy() for n, p in load_weights(base, model_only=True).items()}
    layouts = {n: ([2], [0] + [-1] * (w.ndim - 1)) for n, w in weights.items()}  # every tensor cut on dim 0
    ranks = []
    for r in range(2):
        ranks.append(tmp_path / f"slice_{r}.ckpt")
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(np.split(w, 2)[r])} for n, w in weights.items()],
                           str(ranks[-1]))
    strategy = write_strategy(tmp_path / "strategy.ckpt", layouts)
    assert run("merge-sliced", "--ranks", *ranks, "--strategy", strategy, "--output", tmp_path / "whole.ckpt") == 0
    whole = load_weights(tmp_path / "whole.ckpt")
    assert all(np.array_equal(whole[n].asnumpy(), w) for n, w in weights.items())
    with pytest.raises(CheckpointError, match="strategy file .*missing.ckpt does not exist"):
        run("merge-sliced", "--ranks", *ranks, "--strategy", tmp_path / "missing.ckpt", "--output", tmp_path / "y.ckpt")

    from safetensors.numpy import save_file

    cfg = GPT2Config.from_dict(ckpt.read_manifest(base)["model_config"])
    save_file({hf: np.ascontiguousarray(weights[ours].T if t else weights[ours])
               for ours, (hf, t) in hf_gpt2_table(cfg.n_layer).items()}, str(tmp_path / "hf.safetensors"))
    assert run("import-hf", tmp_path / "hf.safetensors", "--model-type", "gpt2_tiny", "--vocab-size",
               cfg.vocab_size, "--output", tmp_path / "hf.ckpt") == 0
    imported = load_weights(tmp_path / "hf.ckpt")
    assert all(np.array_equal(imported[n].asnumpy(), w) for n, w in weights.items())
    with pytest.raises(MftasksError, match=r"transformer\.wte\.embedding_table \(from wte\.weight\): the file gives "
                                           rf"\({cfg.vocab_size}, 64\), the model gpt2_tiny expects \(512, 64\)"):
        run("import-hf", tmp_path / "hf.safetensors", "--model-type", "gpt2_tiny", "--output", tmp_path / "z.ckpt")
    assert "imported:" in capsys.readouterr().out
