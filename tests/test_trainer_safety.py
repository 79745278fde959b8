"""The Trainer never trains on a mismatched pair, never writes where it must not, never deletes what it did not
create, and ends a full disk in a clear message (issue 11).  Real MindSpore training, real sentencepiece."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mftasks import Trainer, TrainingArguments
from mftasks import checkpoint as ckpt
from mftasks.cli import main
from mftasks.errors import CheckpointError, ConfigError, DataError, DiskFullError

TINY = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}
GOOD_YAML = Path(__file__).resolve().parents[1] / "configs" / "gpt2" / "run_gpt2_tiny.yaml"


def _args(out, **kw):
    base = dict(output_dir=str(out), batch_size=2, learning_rate=1e-3, max_steps=2, save_steps=2, logging_steps=1,
                seed=7)
    base.update(kw)
    return TrainingArguments(**base)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder (hidden ones included) with a file's bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def cli(argv, capfd) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capfd.readouterr().err


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tiny_dataset):
    """A 2-step train run on tiny_dataset (tokenizer A): its output dir and newest checkpoint."""
    out = tmp_path_factory.mktemp("run_a") / "output"
    result = Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()
    return out, result.checkpoint


@pytest.fixture(scope="module")
def dataset_b(tmp_path_factory, corpus_dir, tiny_dataset):
    """The same corpus tokenized with another sentencepiece model of the same vocabulary size (tokenizer B)."""
    from mftasks.data import PrepareSpec, prepare, read_manifest

    out = tmp_path_factory.mktemp("tok_b") / "dataset"
    prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=64, seed=99,
                        tokenizer_type="unigram", eval_fraction=0.1))
    a, b = read_manifest(tiny_dataset)["tokenizer"], read_manifest(out)["tokenizer"]
    assert a["vocab_size"] == b["vocab_size"] == 300 and a["sha256"] != b["sha256"]
    return out


# ---------------------------------------------------------------------------------------------- tokenizer pair
@pytest.mark.parametrize("pet_method, method", [("", "train"), ("lora", "finetune"), ("", "finetune")],
                         ids=["train", "lora-finetune", "full-finetune"])
def test_start_checkpoint_of_another_tokenizer_is_refused_before_step_1(tmp_path, run_a, dataset_b, tiny_dataset,
                                                                          pet_method, method):
    _, ckpt_a = run_a
    out = tmp_path / "out"
    t = Trainer(model=TINY, pet_method=pet_method, args=_args(out), train_dataset=dataset_b)
    with pytest.raises(DataError) as err:
        getattr(t, method)(**{f"{method}_checkpoint": str(ckpt_a)})
    msg = str(err.value)
    assert "refused before step 1" in msg and f"train_dataset {dataset_b} was tokenized with another tokenizer" in msg
    assert str(dataset_b / "tokenizer.model") in msg  # B, the dataset's tokenizer
    assert str(ckpt_a.name) in msg and str(tiny_dataset.resolve()) in msg  # A: the checkpoint and its dataset
    assert "--tokenizer" in msg
    assert not out.exists()  # nothing trained, nothing written


def test_resume_from_a_checkpoint_of_another_tokenizer_is_refused(tmp_path, run_a, dataset_b):
    _, ckpt_a = run_a
    out = tmp_path / "out"
    with pytest.raises(DataError, match="(?s)does not fit the checkpoint it resumes.*tokenized with another tokenizer"):
        Trainer(model=TINY, args=_args(out, max_steps=4, resume_from_checkpoint=str(ckpt_a)),
                train_dataset=dataset_b).train()
    assert not out.exists()


def test_start_checkpoint_of_the_same_tokenizer_trains(tmp_path, run_a, tiny_finetune_dataset):
    _, ckpt_a = run_a
    result = Trainer(model=TINY, pet_method="lora", args=_args(tmp_path / "out", max_steps=1),
                     train_dataset=tiny_finetune_dataset).finetune(finetune_checkpoint=str(ckpt_a))
    assert result.steps == 1 and ckpt.read_manifest(result.checkpoint)["base"]["path"] == str(ckpt_a.resolve())


# ---------------------------------------------------------------------------------------------- messages, not tracebacks
def test_run_on_a_dataset_without_its_tokenizer(tmp_path, tiny_dataset, capfd):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "tokenizer.model").unlink()
    code, err = cli(["run", "--config", GOOD_YAML, "--train_dataset", data, "--output_dir", tmp_path / "out"], capfd)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: train_dataset {data} is incomplete or changed since `mftasks data prepare`")
    assert f"{data / 'tokenizer.model'}: missing" in err and "prepare the dataset again" in err
    assert not (tmp_path / "out").exists()


def test_run_with_output_dir_a_file(tmp_path, tiny_dataset, capfd):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    code, err = cli(["run", "--config", GOOD_YAML, "--train_dataset", tiny_dataset, "--output_dir", target], capfd)
    assert code == 2 and "Traceback" not in err
    assert f"output_dir={target}: is a file, not a folder" in err and "--output_dir" in err
    code, err = cli(["run", "--config", GOOD_YAML, "--train_dataset", tiny_dataset, "--output_dir", target / "sub"],
                    capfd)
    assert code == 2 and f"lies under {target}, which is a file" in err
    assert target.read_text() == "mine\n"


def test_max_steps_minus_one_trains_the_epochs_and_says_so(tmp_path, corpus_dir, tiny_dataset):
    from conftest import small_pretrain

    from mftasks.data import read_manifest

    data = small_pretrain(tmp_path / "data", corpus_dir, tiny_dataset / "tokenizer.model", approx_samples=14)
    samples = read_manifest(data)["splits"]["train"]["samples"]
    per_epoch = samples // 4
    assert 1 <= per_epoch <= 6
    out = tmp_path / "out"
    result = Trainer(model=TINY, args=_args(out, batch_size=4, max_steps=-1, num_train_epochs=2, save_steps=100),
                     train_dataset=data).train()
    assert result.steps == 2 * per_epoch
    log = (out / "log" / "rank_0" / "mindformer.log").read_text()
    said = (f"max_steps is -1: training num_train_epochs=2 epoch(s) of {per_epoch} steps = {2 * per_epoch} steps; "
            "set max_steps to train a fixed number of steps")
    assert log.count(said) == 1


def test_eval_of_a_checkpoint_converted_to_safetensors(tmp_path, run_a, tiny_dataset):
    from mftasks.ckpt import convert

    _, ckpt_a = run_a
    st = convert(ckpt_a, tmp_path / "a.safetensors")
    t = Trainer(model=TINY, args=_args(tmp_path / "eval"), eval_dataset=tiny_dataset)
    assert t.evaluate(eval_checkpoint=str(st))["loss"] == pytest.approx(t.evaluate(eval_checkpoint=str(ckpt_a))["loss"])


def test_eval_and_predict_of_a_manifest_without_lineage(tmp_path, run_a, tiny_dataset):
    """A manifest that vouches for the bytes but records no model config or tokenizer (as `ckpt convert` of a file
    without a manifest wrote one): a CheckpointError naming what is missing, not `TypeError: 'NoneType' ...`."""
    _, ckpt_a = run_a
    bare = tmp_path / "bare.ckpt"
    shutil.copyfile(ckpt_a, bare)
    m = ckpt.read_manifest(ckpt_a)
    m.update(file=bare.name, model_config=None, tokenizer=None, dataset=None, dataset_id=None,
             converted_from={"path": "/elsewhere/x.safetensors", "sha256": m["sha256"], "manifest": False})
    ckpt.manifest_path_of(bare).write_text(json.dumps(m))
    t = Trainer(model=TINY, args=_args(tmp_path / "eval"), eval_dataset=tiny_dataset)
    with pytest.raises(CheckpointError) as err:
        t.evaluate(eval_checkpoint=str(bare))
    msg = str(err.value)
    assert msg.startswith(f"{bare}: its manifest (bare.manifest.json) does not record model_config (the model's "
                          "shape), which evaluate needs")
    assert "converted from /elsewhere/x.safetensors (a file with no manifest)" in msg
    with pytest.raises(CheckpointError, match=r"does not record model_config .*, tokenizer .*which predict needs"):
        t.predict(input_data="hello", predict_checkpoint=str(bare))


# ---------------------------------------------------------------------------------------------- output folder
@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_output_dir_overlapping_a_dataset_is_refused(tmp_path, tiny_dataset, where):
    data = tmp_path / "proj" / "data"
    shutil.copytree(tiny_dataset, data)
    out = {"is": data, "inside": data / "out", "contains": tmp_path / "proj"}[where]
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match={"is": "is the input", "inside": "lies inside the input",
                                           "contains": "contains the input"}[where]) as err:
        Trainer(model=TINY, args=_args(out), train_dataset=data).train()
    assert f"output_dir {out}" in str(err.value)
    assert tree(tmp_path) == before


def test_overwrite_output_dir_removes_only_its_own_checkpoints(tmp_path, tiny_dataset):
    out = tmp_path / "out"
    Trainer(model=TINY, args=_args(out, max_steps=4), train_dataset=tiny_dataset).train()
    folder = ckpt.rank_dir(out, 0)
    (out / "notes.txt").write_text("mine")
    (folder / "mine.ckpt").write_bytes(b"user weights")
    (folder / ".keep").write_text("")
    Trainer(model=TINY, args=_args(out, max_steps=2, overwrite_output_dir=True), train_dataset=tiny_dataset).train()
    assert (out / "notes.txt").read_text() == "mine" and (folder / "mine.ckpt").read_bytes() == b"user weights"
    assert (folder / ".keep").exists()
    assert not (folder / "mindformers_rank_0-1_4.ckpt").exists()  # the old run's own checkpoint went
    assert [i.global_step for i in ckpt.listing(folder)] == [2]


def test_a_users_file_under_a_checkpoint_name_is_never_written_over(tmp_path, tiny_dataset):
    out = tmp_path / "out"
    folder = ckpt.rank_dir(out, 0)
    folder.mkdir(parents=True)
    theirs = folder / "mindformers_rank_0-1_2.ckpt"  # no manifest: not written by mftasks
    theirs.write_bytes(b"the user's own bytes")
    before = tree(out)
    with pytest.raises(ConfigError, match=f"{theirs} is not an mftasks checkpoint file, but this run would write"):
        Trainer(model=TINY, args=_args(out, overwrite_output_dir=True), train_dataset=tiny_dataset).train()
    assert tree(out) == before


def test_overwrite_output_dir_deletes_nothing_when_a_check_fails(tmp_path, tiny_dataset):
    out = tmp_path / "out"
    Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()
    before = tree(out)
    with pytest.raises(ConfigError, match="too few for one step of batch_size 100000"):
        Trainer(model=TINY, args=_args(out, overwrite_output_dir=True, batch_size=100_000),
                train_dataset=tiny_dataset).train()
    assert tree(out) == before


def test_starting_from_a_checkpoint_the_run_would_delete_is_refused(tmp_path, tiny_dataset):
    out = tmp_path / "out"
    first = Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()
    before = tree(out)
    with pytest.raises(ConfigError, match="holds the checkpoint this train run starts from .*another output_dir"):
        Trainer(model=TINY, args=_args(out, overwrite_output_dir=True), train_dataset=tiny_dataset).train(
            train_checkpoint=str(first.checkpoint))
    assert tree(out) == before


def test_stale_temporaries_of_killed_attempts_are_removed(tmp_path, tiny_dataset):
    folder = ckpt.rank_dir(tmp_path / "out", 0)
    folder.mkdir(parents=True)
    stale = folder / f".mindformers_rank_0-1_2.ckpt.tmp-{dead_pid()}-0123abcd"
    stale.write_bytes(b"partial")
    user = folder / ".my-notes"
    user.write_text("keep")
    Trainer(model=TINY, args=_args(tmp_path / "out"), train_dataset=tiny_dataset).train()
    assert not stale.exists() and user.read_text() == "keep"


# ---------------------------------------------------------------------------------------------- disk full
def test_disk_full_at_the_checkpoint_ends_in_a_clear_error(small_fs, tiny_dataset):
    fs = small_fs(900_000)  # room for the tokenizer and logs, not for a checkpoint (~1.5 MB with Adam state)
    out = fs / "out"
    with pytest.raises(DiskFullError) as err:
        Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()
    msg = str(err.value)
    folder = ckpt.rank_dir(out, 0)
    assert str(folder) in msg and "free some space" in msg and "checkpoint" in msg
    assert msg.startswith(("disk full while writing ", "not enough space to write "))
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert left == [], left  # no partial .ckpt, no temporary, no manifest, no meta.json


def _fill(fs: Path, leave: int) -> None:
    """Fill the filesystem `fs` with one file, then give back `leave` bytes (rounded up to whole pages)."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    give = -(-leave // 4096) * 4096
    with open(filler, "r+b") as f:
        f.truncate(max(size - give, 0))


def test_disk_full_at_the_step_log_ends_in_a_clear_error(small_fs, tiny_dataset, capfd):
    fs = small_fs(2_000_000)
    out = fs / "out"
    _fill(fs, (tiny_dataset / "tokenizer.model").stat().st_size)  # room for the tokenizer copy, then nothing
    with pytest.raises(DiskFullError) as err:
        Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()
    msg = str(err.value)
    assert msg.startswith("disk full while writing the step log (metrics.jsonl, heartbeat.json) at "
                          f"{out / 'log' / 'rank_0'}")
    assert (out / "tokenizer.model").read_bytes() == (tiny_dataset / "tokenizer.model").read_bytes()
    hidden = [p.name for p in out.rglob(".*")]
    assert hidden == [], hidden  # no temporary left behind
    assert not ckpt.rank_dir(out, 0).exists() or not any(ckpt.rank_dir(out, 0).iterdir())
