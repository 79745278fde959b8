"""`make demo`: the main job.

Today: build the embedded demo corpus and prepare both datasets (pretraining and finetune, sharing
one tokenizer).  The finetune-gpt2 Prefect pipeline grows from here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .data import PrepareSpec, demo_corpus, inspect, prepare

DEMO_ROOT = Path(os.environ.get("MFTASKS_DEMO_DIR", "demo"))
SEQ_LENGTH = 256
VOCAB_SIZE = 4000


def main() -> int:
    corpus_dir = DEMO_ROOT / "corpus"
    if not (corpus_dir / "checks" / "qa_checks.jsonl").is_file():
        corpus = demo_corpus.build(corpus_dir)
        print(f"demo corpus: {corpus.pretrain_documents} pretraining documents ({corpus.pretrain_bytes:,} bytes), "
              f"{corpus.finetune_documents} finetune question/answer documents")
    pre = prepare(PrepareSpec(inputs=[str(corpus_dir / "pretrain")], patterns=("*.jsonl",),
                              output=str(DEMO_ROOT / "data" / "pretrain"), vocab_size=VOCAB_SIZE,
                              seq_length=SEQ_LENGTH, workers=2))
    fin = prepare(PrepareSpec(inputs=[str(corpus_dir / "finetune")], patterns=("*.jsonl",),
                              output=str(DEMO_ROOT / "data" / "finetune"),
                              tokenizer=str(DEMO_ROOT / "data" / "pretrain" / "tokenizer.model"),
                              seq_length=SEQ_LENGTH, workers=2))
    for name, r in (("pretrain", pre), ("finetune", fin)):
        print(f"{name:<9} {r.status:<10} {r.output}  id {r.dataset_id[:12]}  "
              f"{r.train_samples} train / {r.eval_samples} eval samples of {SEQ_LENGTH + 1} tokens")
    print(inspect(pre.output).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
