"""Dataset preparation: output shape, manifest, idempotence, workers, atomicity."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mftasks.data import PrepareSpec, inspect, prepare, read_manifest, verify
from mftasks.data import packing, shards
from mftasks.data import tokenizer as tok
from mftasks.errors import DiskFullError
from mftasks.files import sha256_file

from conftest import TINY_SEQ, write_qa


def _rows(folder: Path, split: str = "train") -> np.ndarray:
    import mindspore.dataset as ds

    m = read_manifest(folder)
    files = [str(folder / s["file"]) for s in m["splits"][split]["shards"] if not s["file"].endswith(".db")]
    data = ds.MindDataset(files, columns_list=["input_ids", "attention_mask"], shuffle=False)
    return np.stack([r["input_ids"] for r in data.create_dict_iterator(output_numpy=True)])


def test_rows_hold_seq_length_plus_one_tokens(tiny_dataset):
    rows = _rows(tiny_dataset)
    m = read_manifest(tiny_dataset)
    assert rows.shape == (m["splits"]["train"]["samples"], TINY_SEQ + 1)
    assert rows.dtype == np.int32
    assert rows.max() < m["tokenizer"]["vocab_size"]
    eos = m["tokenizer"]["eos_id"]
    assert (rows == eos).sum() > 0  # documents are separated by EOS


def test_manifest_records_sources_tokenizer_params_and_counts(tiny_dataset, corpus_dir):
    m = read_manifest(tiny_dataset)
    assert m["format_version"] == 1 and len(m["dataset_id"]) == 64
    assert m["tokenizer"]["sha256"] == sha256_file(tiny_dataset / "tokenizer.model")
    assert m["tokenizer"]["vocab_size"] == 300 and m["tokenizer"]["eos_id"] == tok.EOS_ID
    paths = [Path(s["path"]).name for s in m["sources"]]
    assert paths == ["a.txt", "c.md", "b.txt"]  # sorted by path relative to the folder: a.txt, c.md, nested/b.txt
    for s in m["sources"]:
        assert s["sha256"] == sha256_file(s["path"]) and s["size"] == Path(s["path"]).stat().st_size
    assert m["params"]["seq_length"] == TINY_SEQ and m["params"]["eval_fraction"] == 0.1
    for split in ("train", "eval"):
        sp = m["splits"][split]
        assert sp["samples"] * (TINY_SEQ + 1) + sp["dropped_tokens"] == sp["tokens"]
        assert 0 <= sp["dropped_tokens"] < TINY_SEQ + 1
        for shard in sp["shards"]:
            assert sha256_file(tiny_dataset / shard["file"]) == shard["sha256"]
    total_docs = sum(s["documents"] for s in m["sources"])
    assert m["splits"]["train"]["documents"] + m["splits"]["eval"]["documents"] == total_docs
    assert m["splits"]["eval"]["documents"] == round(total_docs * 0.1)


def test_second_run_is_up_to_date_and_touches_nothing(tiny_dataset, corpus_dir):
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset.rglob("*")}
    m = read_manifest(tiny_dataset)
    spec = PrepareSpec(inputs=[str(corpus_dir)], output=str(tiny_dataset), vocab_size=300, seq_length=TINY_SEQ,
                       eval_fraction=0.1)
    result = prepare(spec)
    assert result.status == "up_to_date" and result.dataset_id == m["dataset_id"]
    assert {p: p.stat().st_mtime_ns for p in tiny_dataset.rglob("*")} == before


def test_changed_parameter_rebuilds_with_new_id(tmp_path, corpus_dir):
    out = tmp_path / "ds"
    a = prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=32))
    b = prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=48, force=True))
    assert a.status == "created" and b.status == "replaced" and a.dataset_id != b.dataset_id
    assert read_manifest(out)["seq_length"] == 48
    assert not list(tmp_path.glob(".ds.*"))  # no staging or old folders left


def test_workers_give_byte_identical_shards(tmp_path, corpus_dir):
    results = {}
    for n in (1, 2):
        out = tmp_path / f"w{n}"
        prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=32,
                            num_shards=2, workers=n))
        m = read_manifest(out)
        results[n] = [(s["file"], s["sha256"]) for sp in m["splits"].values() for s in sp["shards"]]
        results[n].append(("tokenizer", m["tokenizer"]["sha256"]))
    assert results[1] == results[2]
    assert len(results[1]) == 9  # 2 splits x 2 shards x (data + index) + tokenizer


def test_tokenize_is_identical_for_any_worker_count(tiny_dataset):
    docs = [f"document number {i} " * (i % 7 + 1) for i in range(1200)]  # > 2 chunks
    proto = (tiny_dataset / "tokenizer.model").read_bytes()
    one = packing.tokenize(docs, proto, 1)
    two = packing.tokenize(docs, proto, 2)
    assert len(one) == len(two) == 1200 and all(np.array_equal(a, b) for a, b in zip(one, two))


def test_tokenizer_training_is_deterministic():
    docs = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(300)]
    assert tok.train(docs, 80, "bpe", 3, 1000) == tok.train(docs, 80, "bpe", 3, 1000)
    from mftasks.data.demo_corpus import stdlib_docstrings

    unigram = tok.load(tok.train(list(stdlib_docstrings(30_000)), 200, "unigram", 3, 1000))
    assert tok.describe(unigram).model_type == "unigram"


def test_reused_tokenizer_is_copied_and_recorded(tiny_finetune_dataset, tiny_dataset):
    m = read_manifest(tiny_finetune_dataset)
    assert m["tokenizer"]["trained"] is False
    assert m["tokenizer"]["sha256"] == read_manifest(tiny_dataset)["tokenizer"]["sha256"]
    assert m["sources"][0]["path"].endswith("qa.jsonl")


def test_jsonl_with_custom_field(tmp_path, tiny_dataset):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"line {i} of the story about a fox"}) for i in range(400)))
    r = prepare(PrepareSpec(inputs=[str(path)], output=str(tmp_path / "o"), jsonl_field="body",
                            tokenizer=str(tiny_dataset / "tokenizer.model"), seq_length=16))
    assert r.manifest["sources"][0]["documents"] == 400 and r.train_samples > 0


def test_pattern_is_configurable(tmp_path, tiny_dataset, corpus_dir):
    r = prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(tmp_path / "o"), patterns=("*.md",),
                            tokenizer=str(tiny_dataset / "tokenizer.model"), seq_length=16))
    assert [Path(s["path"]).name for s in r.manifest["sources"]] == ["c.md"]


def test_inspect_verifies_and_decodes(tiny_dataset):
    report = inspect(tiny_dataset)
    assert report.ok and len(report.sample_ids) == TINY_SEQ + 1
    assert len(report.sample_text) > 20
    assert "verified  yes" in report.render()


def test_inspect_reports_tampered_and_truncated_shards(tmp_path, tiny_dataset):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    m = read_manifest(copy)
    train = copy / m["splits"]["train"]["shards"][0]["file"]
    evalf = copy / m["splits"]["eval"]["shards"][0]["file"]
    os.chmod(train, 0o600), os.chmod(evalf, 0o600)
    data = bytearray(train.read_bytes())
    data[-100] ^= 0xFF
    train.write_bytes(bytes(data))
    evalf.write_bytes(evalf.read_bytes()[:1000])
    problems = verify(copy)
    assert any("sha256 does not match" in p and "train.mindrecord" in p for p in problems)
    assert any("truncated" in p and "eval.mindrecord" in p for p in problems)
    cli = subprocess.run([sys.executable, "-m", "mftasks.cli", "data", "inspect", str(copy)],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "verified  NO" in cli.stdout


def test_cli_prepare_then_noop(tmp_path, corpus_dir):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "mftasks.cli", "data", "prepare", "--input", str(corpus_dir), "--output",
            str(out), "--vocab-size", "300", "--seq-length", "32"]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("created:")
    second = subprocess.run(args, capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.startswith("up to date:")


def test_write_failure_midway_keeps_previous_dataset(tmp_path, corpus_dir, monkeypatch):
    out = tmp_path / "ds"
    prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=32))
    before = {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    real = shards.write_split
    calls = []

    def failing(samples, folder, name, num_shards):
        calls.append(name)
        if name == "eval":  # train already written into the staging folder: fail half-way
            raise OSError(28, "No space left on device")
        return real(samples, folder, name, num_shards)

    monkeypatch.setattr(shards, "write_split", failing)
    with pytest.raises(DiskFullError, match=f"disk full while writing the eval split .* at {out / 'eval'}"):
        prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), vocab_size=300, seq_length=40, force=True))
    assert calls == ["train", "eval"]
    assert {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()} == before
    assert read_manifest(out)["seq_length"] == 32 and not verify(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging folder left behind


def test_stale_staging_folder_of_dead_process_is_removed(tmp_path, tiny_dataset, corpus_dir):
    out = tmp_path / "ds"
    stale = tmp_path / ".ds.tmp-999999999-deadbeef"
    stale.mkdir()
    (stale / "half.mindrecord").write_bytes(b"x" * 10)
    prepare(PrepareSpec(inputs=[str(corpus_dir / "c.md")], output=str(out),
                        tokenizer=str(tiny_dataset / "tokenizer.model"), seq_length=16))
    assert not stale.exists()


def test_qa_fixture_is_checkable(tmp_path):
    path = write_qa(tmp_path / "qa.jsonl", n=50)
    for line in path.read_text().splitlines():
        text = json.loads(line)["text"]
        q, a = text.split("\nAnswer: ")
        if " plus " in q:
            x, y = q.removeprefix("Question: What is ").removesuffix("?").split(" plus ")
            assert int(a) == int(x) + int(y)
