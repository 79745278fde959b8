"""Checkpoint sets, data-parallel replica merges, LoRA merges and formats, on checkpoints the Trainer wrote."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from mftasks import Trainer, TrainingArguments
from mftasks import checkpoint as ckpt
from mftasks.ckpt import (convert, import_hf_gpt2, load_weights, merge_lora, merge_replicas, newest_verified_set,
                          set_of)
from mftasks.ckpt.formats import hf_gpt2_table
from mftasks.errors import CheckpointError, OutputExistsError
from mftasks.files import sha256_file
from mftasks.model import GPT2Config, GPT2LMHeadModel, LoraConfig, apply_lora

TINY = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}
IDS = np.array([[5, 17, 42, 9, 100, 3, 250, 7], [1, 2, 3, 4, 5, 6, 7, 8]], dtype=np.int32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, tiny_finetune_dataset) -> Path:
    """A train run (checkpoints at steps 2 and 4) and a LoRA finetune on it (adapter at step 2)."""
    out = tmp_path_factory.mktemp("ckpt_merge") / "output"
    args = dict(output_dir=str(out), batch_size=4, max_steps=4, save_steps=2, seed=7)
    Trainer(model=TINY, args=TrainingArguments(**args), train_dataset=tiny_dataset).train()
    lora = dict(args, max_steps=2, learning_rate=2e-2)  # a large step so the adapter is far from zero
    Trainer(model=TINY, pet_method="lora", args=TrainingArguments(**lora),
            train_dataset=tiny_finetune_dataset).finetune()
    return out


@pytest.fixture
def out(trained, tmp_path) -> Path:
    """A private copy of the trained output dir (tests damage it)."""
    return Path(shutil.copytree(trained, tmp_path / "output"))


def replicate(output_dir: Path, world: int, prefix: str = "mindformers") -> None:
    """Make ranks 1..world-1 byte copies of rank 0 (what data-parallel training writes), manifests included."""
    for info in ckpt.listing(ckpt.rank_dir(output_dir, 0)):
        if info.manifest["prefix"] != prefix:
            continue
        _rewrite_manifest(info.path, world_size=world)
        for rank in range(1, world):
            folder = ckpt.rank_dir(output_dir, rank)
            folder.mkdir(parents=True, exist_ok=True)
            name = ckpt.file_name(prefix, rank, info.manifest["epoch"], info.manifest["step_in_epoch"])
            shutil.copyfile(info.path, folder / name)
            body = dict(info.manifest, rank=rank, file=name, world_size=world)
            ckpt.manifest_path_of(folder / name).write_text(json.dumps(body))


def rank_file(output_dir: Path, rank: int, step: int) -> Path:
    return ckpt.rank_dir(output_dir, rank) / ckpt.file_name("mindformers", rank, 1, step)


def _rewrite_manifest(path: Path, **fields) -> None:
    mpath = ckpt.manifest_path_of(path)
    body = json.loads(mpath.read_text())
    body.update(fields)
    mpath.write_text(json.dumps(body))


def _remove(path: Path) -> None:
    path.unlink()
    ckpt.manifest_path_of(path).unlink()


def _model_weights(path) -> dict[str, np.ndarray]:
    return {n: p.asnumpy() for n, p in load_weights(path, model_only=True).items()}


def _logits(cfg: GPT2Config, weights: dict, lora: LoraConfig | None = None, adapter: dict | None = None):
    """Logits of a fresh net (GRAPH mode compiles each new cell with its own state)."""
    net = GPT2LMHeadModel(cfg)
    ms.load_param_into_net(net, {n: ms.Parameter(ms.Tensor(v), name=n) for n, v in weights.items()})
    if lora is not None:
        apply_lora(net, lora)
        ms.load_param_into_net(net, {n: ms.Parameter(ms.Tensor(v), name=n) for n, v in adapter.items()})
    net.set_train(False)
    return net(ms.Tensor(IDS)).asnumpy()


# ---------------------------------------------------------------------------------------------- sets
def test_set_of_takes_the_newest_step_every_rank_has(out):
    replicate(out, 2)
    _remove(rank_file(out, 1, 4))  # rank 1 died before saving step 4
    s = set_of(out, prefix="mindformers")
    assert (s.global_step, s.world_size, s.missing) == (2, 2, [])
    assert s.files == [rank_file(out, 0, 2), rank_file(out, 1, 2)]
    assert any("step(s) 4 skipped" in w for w in s.warnings)
    newest, warnings = newest_verified_set(out, prefix="mindformers")
    assert newest.global_step == 2 and "rank 1 has no checkpoint of step 4" in warnings[0]


def test_set_of_reports_a_missing_rank(out):
    replicate(out, 2)
    shutil.rmtree(ckpt.rank_dir(out, 1))
    with pytest.raises(CheckpointError, match=r"world_size 2 but only rank\(s\) \[0\].*rank 1 has none \(missing\)"):
        set_of(out, prefix="mindformers")
    with pytest.raises(CheckpointError, match="rank 1 of 2 is missing"):
        set_of(out, global_step=4, prefix="mindformers")


def test_set_of_reports_ranks_from_different_steps(out):
    replicate(out, 2)
    _remove(rank_file(out, 0, 4))
    _remove(rank_file(out, 1, 2))
    with pytest.raises(CheckpointError, match=r"ranks from different steps.*rank 0 has step\(s\) 2; rank 1 has "
                                              r"step\(s\) 4"):
        set_of(out, prefix="mindformers")
    with pytest.raises(CheckpointError, match=r"rank 1 has no checkpoint of step 2 \(it has step\(s\) 4\): ranks "
                                              "from different steps"):
        set_of(out, global_step=2, prefix="mindformers")



def _flip_byte(path, from_end: int, mask: int) -> None:
    """Change one byte of a (read-only) checkpoint in place, `from_end` bytes before its end."""
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(-from_end, os.SEEK_END)
        byte = f.read(1)
        f.seek(-from_end, os.SEEK_END)
        f.write(bytes([byte[0] ^ mask]))

def test_set_of_reports_truncated_and_changed_files(out):
    replicate(out, 2)
    truncated, changed = rank_file(out, 1, 4), rank_file(out, 0, 4)
    os.chmod(truncated, 0o600)
    os.truncate(truncated, truncated.stat().st_size - 100)
    _flip_byte(changed, from_end=20, mask=0xFF)
    with pytest.raises(CheckpointError) as err:
        set_of(out, global_step=4, prefix="mindformers")
    msg = str(err.value)
    assert "truncated or changed" in msg and truncated.name in msg
    assert "sha256 does not match its manifest" in msg and changed.name in msg
    newest, warnings = newest_verified_set(out, prefix="mindformers")
    assert newest.global_step == 2 and "skipping" in warnings[0]


# ---------------------------------------------------------------------------------------------- replicas
def test_merge_replicas_publishes_model_weights_once_with_lineage(out, tmp_path):
    replicate(out, 2)
    target = tmp_path / "merged" / "gpt2.ckpt"
    assert merge_replicas(out, target, prefix="mindformers") == target
    m = ckpt.read_manifest(target)
    r0 = ckpt.read_manifest(rank_file(out, 0, 4))
    assert m["kind"] == "full" and m["global_step"] == 4 and m["world_size"] == 1
    for key in ("dataset_id", "tokenizer", "model_config", "training_args", "parent", "stage", "prefix"):
        assert m[key] == r0[key]
    assert [(e["rank"], e["sha256"]) for e in m["merged_from"]] == [(0, r0["sha256"]), (1, r0["sha256"])]
    assert not ckpt.verify(target) and oct(target.stat().st_mode & 0o777) == "0o400"
    merged = {n: p.asnumpy() for n, p in load_weights(target).items()}
    expected = _model_weights(rank_file(out, 0, 4))
    assert list(merged) == list(expected) and all(n.startswith("transformer.") for n in merged)
    assert all(np.array_equal(merged[n], expected[n]) for n in expected)
    assert sorted(p.name for p in target.parent.iterdir()) == ["gpt2.ckpt", "gpt2.manifest.json"]


def test_merge_of_one_rank_publishes_its_weights(out, tmp_path):
    target = merge_replicas(out, tmp_path / "one.ckpt", global_step=2, prefix="mindformers")
    merged = {n: p.asnumpy() for n, p in load_weights(target).items()}
    expected = _model_weights(rank_file(out, 0, 2))
    assert merged.keys() == expected.keys() and all(np.array_equal(merged[n], expected[n]) for n in expected)
    assert ckpt.read_manifest(target)["global_step"] == 2


def test_merge_replicas_names_the_differing_parameters(out, tmp_path):
    replicate(out, 2)
    path = rank_file(out, 1, 4)
    params = load_weights(path)
    w = params["transformer.h.1.mlp.c_fc.weight"].asnumpy().copy()
    w[0, 0] += 1.0
    params["transformer.h.1.mlp.c_fc.weight"] = ms.Parameter(ms.Tensor(w), name="transformer.h.1.mlp.c_fc.weight")
    _remove(path)
    ms.save_checkpoint([{"name": n, "data": p} for n, p in params.items()], str(path))
    body = dict(ckpt.read_manifest(rank_file(out, 0, 4)), rank=1, file=path.name, size=path.stat().st_size,
                sha256=sha256_file(path))
    ckpt.manifest_path_of(path).write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match=r"(?s)not replicas.*rank 1 differs from rank 0 in 1 parameter\(s\): "
                                              r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        merge_replicas(out, tmp_path / "m.ckpt", prefix="mindformers")
    assert not (tmp_path / "m.ckpt").exists()


def test_merge_refuses_an_existing_output_and_leaves_it_alone(out, tmp_path):
    target = tmp_path / "taken.ckpt"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="taken.ckpt already exists and is never overwritten"):
        merge_replicas(out, target, prefix="mindformers")
    assert target.read_bytes() == b"precious"


def _weights_only_ranks(output_dir: Path, world: int) -> None:
    """Rank files holding the model weights alone (no optimizer state): the merge copies rank 0's bytes."""
    for rank in range(world):
        path = rank_file(output_dir, rank, 4)
        weights = load_weights(path, model_only=True)
        body = ckpt.read_manifest(path)
        _remove(path)
        ms.save_checkpoint([{"name": n, "data": p} for n, p in weights.items()], str(path))
        body.update(size=path.stat().st_size, sha256=sha256_file(path))
        ckpt.manifest_path_of(path).write_text(json.dumps(body))


@pytest.mark.parametrize("layout", ["trainer", "weights_only"])
def test_a_changed_rank_0_is_caught_while_merging(out, tmp_path, layout):
    replicate(out, 2)
    if layout == "weights_only":
        _weights_only_ranks(out, 2)
        target = merge_replicas(out, tmp_path / "ok.ckpt", prefix="mindformers")
        assert sha256_file(target) == ckpt.read_manifest(rank_file(out, 0, 4))["sha256"]  # rank 0's bytes
    victim = rank_file(out, 0, 4)
    _flip_byte(victim, from_end=9, mask=0x01)
    with pytest.raises(CheckpointError, match=f"{victim.name}: sha256 does not match its manifest"):
        merge_replicas(out, tmp_path / "m" / "bad.ckpt", prefix="mindformers")
    assert list((tmp_path / "m").iterdir()) == []


@pytest.mark.parametrize("where", ["writer", "manifest"])
def test_a_failed_merge_leaves_no_partial_output(out, tmp_path, monkeypatch, where):
    import mftasks.ckpt.derived as derived
    import mftasks.ckpt.replicas as replicas

    def broken_writer(weights, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full (injected)")

    def broken_manifest(path, body):
        raise OSError("disk full while writing the manifest (injected)")

    if where == "writer":
        monkeypatch.setattr(replicas, "save_weights", broken_writer)
    else:
        monkeypatch.setattr(derived, "atomic_write_json", broken_manifest)
    folder = tmp_path / "merged"
    folder.mkdir()
    with pytest.raises(OSError, match="injected"):
        merge_replicas(out, folder / "gpt2.ckpt", prefix="mindformers")
    assert list(folder.iterdir()) == []


# ---------------------------------------------------------------------------------------------- LoRA
def _lora_pair(out: Path) -> tuple[Path, Path]:
    adapter, _ = ckpt.newest_verified(ckpt.rank_dir(out, 0), kind="lora_adapter")
    return Path(adapter.manifest["base"]["path"]), adapter.path


def test_merge_lora_matches_the_unmerged_model_and_is_idempotent(trained, tmp_path):
    base, adapter = _lora_pair(trained)
    target = tmp_path / "merged.ckpt"
    assert merge_lora(base, adapter, target) == target
    m, am = ckpt.read_manifest(target), ckpt.read_manifest(adapter)
    lora = LoraConfig(**am["lora_config"])
    assert m["kind"] == "full" and m["merged_lora"]["scale"] == lora.scale
    assert m["merged_lora"]["adapter"] == {"path": str(adapter.resolve()), "sha256": am["sha256"]}
    assert m["merged_lora"]["base"]["sha256"] == ckpt.read_manifest(base)["sha256"]
    assert m["dataset_id"] == am["dataset_id"] and "base" not in m

    cfg = GPT2Config.from_dict(m["model_config"])
    base_w = _model_weights(base)
    adapter_w = {n: v for n, v in _model_weights(adapter).items() if ".lora_" in n}
    unmerged = _logits(cfg, base_w, lora, adapter_w)
    merged = _logits(cfg, _model_weights(target))
    np.testing.assert_allclose(merged, unmerged, atol=1e-4, rtol=0)
    assert np.abs(merged - _logits(cfg, base_w)).max() > 1e-3  # the adapter changed the model

    mtime = target.stat().st_mtime_ns
    assert merge_lora(base, adapter, target) == target  # the same merge again: nothing written
    assert target.stat().st_mtime_ns == mtime
    again = tmp_path / "again.ckpt"  # the merged one as base: not merged twice, but the output asked for exists
    assert merge_lora(target, adapter, again) == again
    assert sha256_file(again) == sha256_file(target) and not ckpt.verify(again)
    assert ckpt.read_manifest(again)["merged_lora"] == m["merged_lora"]
    assert merge_lora(target, adapter, again) == again and target.stat().st_mtime_ns == mtime


def test_merge_lora_refuses_an_adapter_for_another_base(trained, tmp_path):
    base, adapter = _lora_pair(trained)
    other = rank_file(trained, 0, 2)
    assert other != base
    with pytest.raises(CheckpointError) as err:
        merge_lora(other, adapter, tmp_path / "x.ckpt")
    msg = str(err.value)
    want, have = ckpt.read_manifest(base)["sha256"], ckpt.read_manifest(other)["sha256"]
    assert f"was trained on base {base}" in msg and want[:16] in msg
    assert f"the given base {other} has sha256 {have[:16]}" in msg
    assert not (tmp_path / "x.ckpt").exists()
    with pytest.raises(CheckpointError, match="is a lora_adapter checkpoint; the base must be full"):
        merge_lora(adapter, adapter, tmp_path / "y.ckpt")


# ---------------------------------------------------------------------------------------------- formats
def test_convert_round_trips_bit_for_bit_with_manifests(trained, tmp_path):
    src = rank_file(trained, 0, 4)
    st = convert(src, tmp_path / "w.safetensors")
    back = convert(st, tmp_path / "w.ckpt")
    a, b = load_weights(src), load_weights(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[n].asnumpy(), b[n].asnumpy()) for n in a)  # safetensors sorts
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(str(st))["transformer.h.0.attn.c_attn.weight"],
                          a["transformer.h.0.attn.c_attn.weight"].asnumpy())
    m = ckpt.read_manifest(back)
    assert m["converted_from"]["path"] == str(st.resolve()) and m["converted_from"]["format"] == "safetensors"
    assert m["dataset_id"] == ckpt.read_manifest(src)["dataset_id"] and not ckpt.verify(st)
    with pytest.raises(OutputExistsError):
        convert(src, st)


def _hf_file(weights: dict, cfg: GPT2Config, path: Path, prefix: str = "") -> Path:
    """A Hugging Face-style GPT-2 file: HF names, Conv1D weights (in, out), mask buffers, tied lm_head."""
    from safetensors.numpy import save_file

    tensors = {}
    for ours, (hf, transpose) in hf_gpt2_table(cfg.n_layer).items():
        tensors[prefix + hf] = np.ascontiguousarray(weights[ours].T if transpose else weights[ours])
    for i in range(cfg.n_layer):
        tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((1, 1, cfg.seq_length, cfg.seq_length), np.float32))
    tensors["lm_head.weight"] = weights["transformer.wte.embedding_table"].copy()
    save_file(tensors, str(path))
    return path


def test_import_hf_gpt2_gives_the_same_logits(trained, tmp_path):
    src = rank_file(trained, 0, 4)
    cfg = GPT2Config.from_dict(ckpt.read_manifest(src)["model_config"])
    weights = _model_weights(src)
    hf = _hf_file(weights, cfg, tmp_path / "model.safetensors", prefix="transformer.")
    target = import_hf_gpt2(hf, tmp_path / "imported.ckpt", cfg)
    imported = _model_weights(target)
    assert imported.keys() == weights.keys() and all(np.array_equal(imported[n], weights[n]) for n in weights)
    np.testing.assert_array_equal(_logits(cfg, imported), _logits(cfg, weights))
    m = ckpt.read_manifest(target)
    assert m["kind"] == "full" and m["model_config"] == cfg.to_dict()
    assert m["imported_from"]["sha256"] == sha256_file(hf)


def test_import_hf_gpt2_names_the_parameter_and_both_shapes(trained, tmp_path):
    src = rank_file(trained, 0, 4)
    cfg = GPT2Config.from_dict(ckpt.read_manifest(src)["model_config"])
    weights = _model_weights(src)
    weights["transformer.h.1.mlp.c_fc.weight"] = weights["transformer.h.1.mlp.c_fc.weight"][:128]  # (128, 64)
    hf = _hf_file(weights, cfg, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        import_hf_gpt2(hf, tmp_path / "x.ckpt", cfg)
    assert ("transformer.h.1.mlp.c_fc.weight (from h.1.mlp.c_fc.weight): the file gives (64, 128) transposed to "
            "(128, 64), the model gpt2_tiny expects (256, 64)") in str(err.value)
    assert not (tmp_path / "x.ckpt").exists()
