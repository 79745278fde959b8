"""Checkpoint writers against a real full disk, convert that keeps verification honest, merge-lora that always
writes --output, and outputs that overlap their inputs (issue 11).

The disk-full cases write into a real tmpfs that is too small (the `small_fs` fixture): either the free-space
check refuses before anything is written, or (with that check skipped, or the disk filled by another writer
after it) the real write hits ENOSPC.  Either way the command ends in a DiskFullError (CLI: exit 2) naming the
path and the space needed, and nothing partial or hidden is left.  Stale temporaries come from a real writer
killed mid-write (RLIMIT_FSIZE + SIGXFSZ), and the next run removes them.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from conftest import train_base_and_adapter

from mftasks import Trainer
from mftasks import checkpoint as ckpt
from mftasks.ckpt import load_weights, merge_sliced, transform, write_strategy
from mftasks.cli import main
from mftasks.errors import CheckpointError, DiskFullError
from mftasks.files import sha256_file
from mftasks.model import GPT2Config, GPT2LMHeadModel

TINY = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, tiny_finetune_dataset) -> Path:
    """A 2-step train run (checkpoint at step 2) and a 1-step LoRA adapter on it, rank 0."""
    return train_base_and_adapter(tmp_path_factory.mktemp("ckpt_safety") / "output", tiny_dataset,
                                  tiny_finetune_dataset)


def base_of(out: Path) -> Path:
    return ckpt.rank_dir(out, 0) / "mindformers_rank_0-1_2.ckpt"


def adapter_of(out: Path) -> Path:
    return ckpt.rank_dir(out, 0) / "mindformers_lora_rank_0-1_1.ckpt"


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["ckpt", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder: Path) -> list[str]:
    """Every name under folder (hidden ones included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def skip_free_space_check(monkeypatch) -> None:
    """Skip the pre-check so the real write meets the real full disk (the failure it must still handle)."""
    import mftasks.ckpt.derived as derived
    import mftasks.ckpt.sliced as sliced

    monkeypatch.setattr(derived, "require_space", lambda *a, **k: None)
    monkeypatch.setattr(sliced, "require_space", lambda *a, **k: None)


# ------------------------------------------------------------------------------------------- disk full: CLI
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_convert_onto_a_small_disk_is_refused_before_writing(trained, small_fs, capsys, suffix):
    fs = small_fs(64 * 1024)
    dst = fs / f"w{suffix}"
    code, _, err = cli(capsys, "convert", base_of(trained), dst)
    assert code == 2
    assert f"error: not enough space to write checkpoint {dst.name} at {fs}: needs about" in err
    assert listing(fs) == []


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_convert_that_hits_a_full_disk_leaves_nothing_and_the_next_run_works(trained, small_fs, capsys, monkeypatch,
                                                                            suffix):
    skip_free_space_check(monkeypatch)
    fs = small_fs(64 * 1024)
    dst = fs / "sub" / f"w{suffix}"
    code, _, err = cli(capsys, "convert", base_of(trained), dst)
    assert code == 2, err
    first = err.strip().splitlines()[0]
    assert first.startswith(f"error: disk full while writing checkpoint {dst.name} at {dst}: needs about "), first
    assert "nothing partial was kept" in first
    assert listing(fs / "sub") == []  # no checkpoint, no manifest, no `.tmp` and no staging folder


def test_merge_lora_onto_a_full_disk(trained, small_fs, capsys, monkeypatch):
    fs = small_fs(64 * 1024)
    out = fs / "merged.ckpt"
    code, _, err = cli(capsys, "merge-lora", "--base", base_of(trained), "--adapter", adapter_of(trained),
                       "--output", out)
    assert code == 2 and f"error: not enough space to write checkpoint merged.ckpt at {fs}: needs about" in err
    assert listing(fs) == []
    skip_free_space_check(monkeypatch)
    code, _, err = cli(capsys, "merge-lora", "--base", base_of(trained), "--adapter", adapter_of(trained),
                       "--output", out)
    assert code == 2 and f"error: disk full while writing checkpoint merged.ckpt at {out}: needs about" in err
    assert listing(fs) == []


def test_merge_replicas_onto_a_full_disk(trained, small_fs, capsys, monkeypatch):
    skip_free_space_check(monkeypatch)
    fs = small_fs(64 * 1024)
    out = fs / "full.safetensors"
    code, _, err = cli(capsys, "merge", trained, "--output", out, "--prefix", "mindformers")
    assert code == 2 and f"error: disk full while writing checkpoint full.safetensors at {out}" in err
    assert listing(fs) == []


# ------------------------------------------------------------------------------------------- disk full: sliced
CFG = GPT2Config.from_name("gpt2_tiny", vocab_size=300, dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def sliced_run(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two bare rank files of a tiny GPT-2 cut on dim 0, and their strategy file."""
    root = tmp_path_factory.mktemp("sliced")
    ms.set_seed(3)
    weights = {n: p.asnumpy() for n, p in GPT2LMHeadModel(CFG).parameters_and_names()}
    files = []
    for r in range(2):
        files.append(root / f"rank_{r}.ckpt")
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(np.split(w, 2)[r])} for n, w in weights.items()],
                           str(files[-1]))
    strategy = write_strategy(root / "strategy.ckpt", {n: ([2], [0] + [-1] * (w.ndim - 1)) for n, w in weights.items()})
    return files, strategy


def test_merge_sliced_and_transform_onto_a_full_disk(sliced_run, small_fs, monkeypatch):
    files, strategy = sliced_run
    fs = small_fs(64 * 1024)
    with pytest.raises(DiskFullError, match=f"not enough space to write checkpoint full.ckpt at {fs}: needs about"):
        merge_sliced(files, [strategy], fs / "full.ckpt")
    with pytest.raises(DiskFullError, match=f"not enough space to write the transformed checkpoint {fs / 'out'}"):
        transform(files, [strategy], None, fs / "out")
    assert listing(fs) == []
    skip_free_space_check(monkeypatch)
    with pytest.raises(DiskFullError, match=f"disk full while writing checkpoint full.ckpt at {fs / 'full.ckpt'}"):
        merge_sliced(files, [strategy], fs / "full.ckpt")
    with pytest.raises(DiskFullError, match=f"disk full while writing the transformed checkpoint {fs / 'out'} at "):
        transform(files, [strategy], None, fs / "out")
    assert listing(fs) == []


def fill(fs: Path, leave: int = 0) -> Path:
    """Another writer fills the filesystem (up to `leave` bytes free)."""
    filler = fs / "filler"
    with open(filler, "ab") as f:
        block = b"\0" * 4096
        try:
            while shutil.disk_usage(fs).free > leave:
                f.write(block)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_write_strategy_onto_a_full_disk(sliced_run, small_fs):
    fs = small_fs(256 * 1024)
    fill(fs)
    with pytest.raises(DiskFullError, match=f"disk full while writing s.ckpt at {fs / 's.ckpt'}: needs about"):
        write_strategy(fs / "s.ckpt", {"w": ([2], [0, -1])})
    assert listing(fs) == ["filler"]


# ------------------------------------------------------------------------------------------- disk full: training
def test_training_checkpoint_onto_a_small_disk_is_refused_before_writing(small_fs):
    fs = small_fs(64 * 1024)
    net = GPT2LMHeadModel(CFG)
    with pytest.raises(DiskFullError, match=r"not enough space to write checkpoint mindformers_rank_0-1_2\.ckpt at "
                                            rf"{ckpt.rank_dir(fs, 0)}: needs about 0\.\d MB"):
        ckpt.save(net, fs, 0, "mindformers", 1, 2, {"global_step": 2, "kind": "full", "prefix": "mindformers"})
    assert listing(ckpt.rank_dir(fs, 0)) == []


def test_training_checkpoint_that_hits_a_full_disk_leaves_nothing(small_fs):
    """The free-space check passes; then another writer fills the disk before MindSpore writes (the real
    ENOSPC inside ms.save_checkpoint, which leaves its `<stem>.tmp` behind)."""
    fs = small_fs(2 * 1024 * 1024)
    net = GPT2LMHeadModel(CFG)
    params = len(list(net.parameters_and_names()))
    calls, filled = [], []

    def choose(name: str) -> bool:  # one pass for the size estimate, then save_checkpoint's own, before it writes
        calls.append(name)
        if len(calls) > params and not filled:
            filled.append(fill(fs))
        return True

    target = ckpt.rank_dir(fs, 0) / "mindformers_rank_0-1_2.ckpt"
    with pytest.raises(DiskFullError) as err:
        ckpt.save(net, fs, 0, "mindformers", 1, 2, {"global_step": 2, "kind": "full", "prefix": "mindformers"},
                  choice_func=choose)
    assert str(err.value).startswith(f"disk full while writing checkpoint {target.name} at {target}: needs about ")
    assert listing(ckpt.rank_dir(fs, 0)) == []  # no checkpoint, manifest, meta.json, `.tmp` or staging folder
    filled[0].unlink()
    info = ckpt.save(net, fs, 0, "mindformers", 1, 2, {"global_step": 2, "kind": "full", "prefix": "mindformers"})
    assert not ckpt.verify(info.path)


KILLED_SAVE = textwrap.dedent("""
    import resource, signal, sys
    import mindspore as ms
    from mftasks import checkpoint as ckpt
    from mftasks.model import GPT2Config, GPT2LMHeadModel
    ms.set_device("CPU")
    net = GPT2LMHeadModel(GPT2Config.from_name("gpt2_tiny", vocab_size=300))
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)           # a write past the limit kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    ckpt.save(net, sys.argv[1], 0, "mindformers", 1, 2, {"global_step": 2, "kind": "full", "prefix": "mindformers"})
""")


def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_save_removes(tmp_path):
    out = tmp_path / "output"
    r = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(out)], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "GLOG_v": "3"})
    assert r.returncode == -signal.SIGXFSZ, r.stderr[-2000:]
    folder = ckpt.rank_dir(out, 0)
    left = listing(folder)
    assert left and all(name.startswith(".mindformers_rank_0-1_2.ckpt.tmp-") for name in left), left
    old = folder / f".mindformers_rank_0-1_1.tmp-{_dead_pid()}.ckpt"  # what earlier versions of save() left
    old.write_bytes(b"partial")
    info = ckpt.save(GPT2LMHeadModel(CFG), out, 0, "mindformers", 1, 2,
                     {"global_step": 2, "kind": "full", "prefix": "mindformers"})
    assert listing(folder) == sorted([info.path.name, ckpt.manifest_path_of(info.path).name, "meta.json"])


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


KILLED_CONVERT = textwrap.dedent("""
    import resource, signal, sys
    import mindspore
    from mftasks.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    sys.exit(main(["ckpt", "convert", sys.argv[1], sys.argv[2]]))
""")


def test_a_convert_killed_mid_write_is_cleaned_by_the_next_convert(trained, tmp_path, capsys):
    dst = tmp_path / "out" / "w.safetensors"
    r = subprocess.run([sys.executable, "-c", KILLED_CONVERT, str(base_of(trained)), str(dst)], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
    assert r.returncode == -signal.SIGXFSZ, r.stderr[-2000:]
    assert [n for n in listing(dst.parent) if n.startswith(".w.safetensors.tmp-")], listing(dst.parent)
    code, out, err = cli(capsys, "convert", base_of(trained), dst)
    assert code == 0, err
    assert listing(dst.parent) == ["w.safetensors", "w.safetensors.manifest.json"]


# ------------------------------------------------------------------------------------------- convert is honest
def test_convert_of_a_file_without_manifest_stays_unverified(trained, tmp_path, capsys, tiny_dataset):
    bare = tmp_path / "bare.safetensors"
    weights = {n: p.asnumpy().astype(np.float16) for n, p in load_weights(base_of(trained), model_only=True).items()}
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(w)} for n, w in weights.items()], str(bare),
                       format="safetensors")  # an edited dtype, and no manifest vouches for it
    dst = tmp_path / "bare.ckpt"
    code, out, err = cli(capsys, "convert", bare, dst)
    assert code == 0, err
    assert out.startswith(f"converted (unverified): {dst}; {bare} has no manifest, so none was written")
    assert dst.is_file() and not ckpt.manifest_path_of(dst).exists()
    code, out, _ = cli(capsys, "verify", dst)
    assert code == 1 and f"FAILED  {dst}" in out and "no manifest (bare.manifest.json) beside it" in out
    trainer = Trainer(model=TINY, args={"output_dir": str(tmp_path / "eval")}, eval_dataset=str(tiny_dataset))
    with pytest.raises(CheckpointError, match="no manifest .* so nothing vouches for it"):
        trainer.evaluate(eval_checkpoint=str(dst))


def test_convert_of_a_file_its_manifest_no_longer_matches_is_refused(trained, tmp_path, capsys):
    src = tmp_path / "w.ckpt"
    shutil.copyfile(base_of(trained), src)
    shutil.copyfile(ckpt.manifest_path_of(base_of(trained)), ckpt.manifest_path_of(src))
    weights = {n: p.asnumpy() for n, p in load_weights(src).items()}
    os.chmod(src, 0o600)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(w.astype(np.float16) if w.dtype == np.float32 else w)}
                        for n, w in weights.items()], str(src))  # dtype edited, manifest left as it was
    code, _, err = cli(capsys, "convert", src, tmp_path / "w.safetensors")
    assert code == 2 and f"error: {src}: " in err and "manifest says" in err, err  # size changed with the dtype
    assert not (tmp_path / "w.safetensors").exists()

    # ... and a manifest re-stamped to vouch for other shapes than its model config gives
    cut = {n: (w[:, :32] if n == "transformer.h.0.mlp.c_fc.weight" else w) for n, w in weights.items()}
    src.unlink()
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(w)} for n, w in cut.items()], str(src))
    body = json.loads(ckpt.manifest_path_of(src).read_text())
    body.update(size=src.stat().st_size, sha256=sha256_file(src))
    ckpt.manifest_path_of(src).write_text(json.dumps(body))
    code, _, err = cli(capsys, "convert", src, tmp_path / "cut.safetensors")
    assert code == 2
    assert f"error: {src} does not hold the model its manifest describes, so it is not converted:" in err
    assert "transformer.h.0.mlp.c_fc.weight: " in err and "expects (256, 64)" in err
    assert not (tmp_path / "cut.safetensors").exists()


def test_a_verified_checkpoint_converts_to_a_verified_one_eval_can_use(trained, tmp_path, capsys, tiny_dataset):
    st = tmp_path / "w.safetensors"
    code, out, _ = cli(capsys, "convert", base_of(trained), st)
    assert code == 0 and out.strip() == f"converted: {st}"
    src, m = ckpt.read_manifest(base_of(trained)), ckpt.read_manifest(st)
    for key in ("model_config", "tokenizer", "dataset_id", "dataset", "kind", "global_step", "parent"):
        assert m[key] == src[key], key
    assert m["converted_from"] == {"path": str(base_of(trained).resolve()), "sha256": src["sha256"], "format": "ckpt"}
    assert cli(capsys, "verify", st)[0] == 0
    back = tmp_path / "back.ckpt"
    assert cli(capsys, "convert", st, back)[0] == 0 and ckpt.read_manifest(back)["model_config"] == src["model_config"]

    trainer = Trainer(model=TINY, args={"output_dir": str(tmp_path / "eval")}, eval_dataset=str(tiny_dataset))
    want = trainer.evaluate(eval_checkpoint=str(base_of(trained)))
    assert trainer.evaluate(eval_checkpoint=str(back)) == want
    assert trainer.evaluate(eval_checkpoint=str(st)) == want


# ------------------------------------------------------------------------------------------- merge-lora --output
def test_merge_lora_on_an_already_merged_base_still_writes_the_output(trained, tmp_path, capsys):
    merged = tmp_path / "merged.ckpt"
    assert cli(capsys, "merge-lora", "--base", base_of(trained), "--adapter", adapter_of(trained),
               "--output", merged)[0] == 0
    out = tmp_path / "again.ckpt"
    code, text, _ = cli(capsys, "merge-lora", "--base", merged, "--adapter", adapter_of(trained), "--output", out)
    assert code == 0
    assert text.strip() == (f"already merged: base {merged} already holds adapter {adapter_of(trained)}; wrote a "
                            f"verified copy of it to {out}")
    assert sha256_file(out) == sha256_file(merged) and cli(capsys, "verify", out)[0] == 0
    assert ckpt.read_manifest(out)["merged_lora"] == ckpt.read_manifest(merged)["merged_lora"]
    code, text, _ = cli(capsys, "merge-lora", "--base", merged, "--adapter", adapter_of(trained), "--output", out)
    assert code == 0 and text.strip() == f"already merged: {out} holds adapter {adapter_of(trained)}; nothing to do"


# ------------------------------------------------------------------------------------------- overlapping outputs
def test_outputs_that_overlap_their_inputs_are_refused(trained, sliced_run, tmp_path, capsys):
    base, adapter = base_of(trained), adapter_of(trained)
    files, strategy = sliced_run
    before = {p: sha256_file(p) for p in (base, adapter, *files, strategy)}
    rank0 = ckpt.rank_dir(trained, 0)
    names = listing(trained)
    cases = [
        (["convert", base, base], f"DST {base} is the input {base}; write the output to a new folder"),
        (["convert", base, base / "x.safetensors"], f"DST {base / 'x.safetensors'} lies inside the input {base}"),
        (["merge", trained, "--output", rank0 / "merged.ckpt", "--prefix", "mindformers"],
         f"--output {rank0 / 'merged.ckpt'} lies inside the input {trained}; write the output outside it"),
        (["merge-lora", "--base", base, "--adapter", adapter, "--output", adapter],
         f"--output {adapter} is the input {adapter}"),
        (["merge-sliced", "--ranks", *files, "--strategy", strategy, "--output", files[1]],
         f"--output {files[1]} is the input {files[1]}"),
        (["transform", "--ranks", *files, "--strategy", strategy, "--output", files[0].parent],
         f"--output {files[0].parent} contains the input {files[0]} (replacing it would delete the input)"),
        (["import-hf", base, "--model-type", "gpt2_tiny", "--output", base], f"--output {base} is the input {base}"),
    ]
    for argv, want in cases:
        code, _, err = cli(capsys, *argv)
        assert code == 2 and want in err, (argv, err)
        assert "Traceback" not in err
    assert {p: sha256_file(p) for p in before} == before and listing(trained) == names
