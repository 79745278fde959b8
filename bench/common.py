"""Shared set-up for benchmarks: the demo corpus prepared at a given seq_length, cached under .bench/."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

from mftasks.data import PrepareSpec, demo_corpus, prepare  # noqa: E402

CACHE = Path(os.environ.get("MFTASKS_BENCH_DIR", ".bench"))


def demo_dataset(seq_length: int, vocab_size: int = 4000) -> Path:
    corpus = CACHE / "corpus"
    if not (corpus / "checks" / "qa_checks.jsonl").is_file():
        demo_corpus.build(corpus)
    out = CACHE / f"pretrain-{seq_length}"
    prepare(PrepareSpec(inputs=[str(corpus / "pretrain")], patterns=("*.jsonl",), output=str(out),
                        vocab_size=vocab_size, seq_length=seq_length))
    return out
