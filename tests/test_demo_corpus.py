"""The embedded demo corpus: big enough, deterministic, checkable answers."""
from __future__ import annotations

import json

import pytest

from mftasks.data import demo_corpus
from mftasks.errors import OutputExistsError


def test_demo_corpus_is_deterministic_and_checkable(tmp_path):
    a = demo_corpus.build(tmp_path / "a", max_bytes=50_000, qa_pairs=300, checks=20)
    b = demo_corpus.build(tmp_path / "b", max_bytes=50_000, qa_pairs=300, checks=20)
    for x, y in [(a.pretrain, b.pretrain), (a.finetune, b.finetune), (a.checks, b.checks)]:
        assert x.read_bytes() == y.read_bytes()
    train = [json.loads(l) for l in a.finetune.read_text().splitlines()]
    checks = [json.loads(l) for l in a.checks.read_text().splitlines()]
    assert len(train) == 300 and len(checks) == 20
    assert all(r["text"].endswith(" " + r["answer"]) for r in train)
    assert all(c["prompt"] == f"Question: {c['question']}\nAnswer:" for c in checks)
    for r in train:
        if r["question"].startswith("Spell the word"):
            word = r["question"].split("'")[1]
            assert r["answer"] == word[::-1]


def test_check_questions_are_held_out_of_the_finetune_data(tmp_path):
    """At the pipeline's sizes (10000 pairs, 200 checks), no check question is in qa.jsonl, which the
    finetune train and eval splits are both prepared from: not as its question field, nor in its text."""
    c = demo_corpus.build(tmp_path / "c", max_bytes=1_000, qa_pairs=10_000, checks=200)
    train = [json.loads(l) for l in c.finetune.read_text().splitlines()]
    checks = [json.loads(l) for l in c.checks.read_text().splitlines()]
    assert len(train) == 10_000 and len(checks) == 200
    questions = [q["question"] for q in checks]
    assert len(set(questions)) == 200  # distinct: 200 checks, not fewer
    trained = {r["question"] for r in train}
    texts = "\n".join(r["text"] for r in train)
    leaked = [q for q in questions if q in trained or f"Question: {q}\n" in texts]
    assert leaked == []
    assert all(q["answer"] for q in checks)


def test_full_pretrain_corpus_is_at_least_2_mb():
    total = sum(len(t.encode("utf-8")) for t in demo_corpus.stdlib_docstrings(3_000_000))
    assert total >= 2_000_000


def test_demo_corpus_refuses_foreign_folder(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        demo_corpus.build(tmp_path, max_bytes=10_000, qa_pairs=10, checks=2)
