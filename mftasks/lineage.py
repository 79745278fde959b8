"""The finetune pipeline's lineage: which artifact was made from which, from tokenizer to eval.

    tokenizer → datasets → checkpoint (train) → base model → adapter (LoRA) → merged model → eval
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lineage:
    """The ids of one pipeline run's artifacts."""

    tokenizer: str
    """The tokenizer model file (trained on the pretraining corpus)."""
    pretrain_corpus: str
    finetune_corpus: str
    pretrain_dataset_id: str
    """The prepared datasets' full dataset_id (shown shortened)."""
    finetune_dataset_id: str
    train_checkpoint: str
    """The train stage's newest checkpoint (rank 0's replica)."""
    base_model: str
    """The published full checkpoint merged from the train stage's replicas."""
    adapter: str
    """The LoRA stage's checkpoint."""
    merged_model: str
    """The base model with the adapter folded in."""
    merged_ppl: float
    """The merged model's perplexity on the finetune eval set."""

    def rows(self) -> list[dict]:
        """One row {artifact, id, from} per artifact, in the order they were made."""
        return [
            {"artifact": "tokenizer", "id": self.tokenizer, "from": "pretraining corpus"},
            {"artifact": "dataset (pretrain)", "id": self.pretrain_dataset_id[:16], "from": self.pretrain_corpus},
            {"artifact": "dataset (finetune)", "id": self.finetune_dataset_id[:16], "from": self.finetune_corpus},
            {"artifact": "checkpoint (train)", "id": self.train_checkpoint, "from": "dataset (pretrain)"},
            {"artifact": "base model", "id": self.base_model, "from": "checkpoint (train), merged replicas"},
            {"artifact": "adapter (LoRA)", "id": self.adapter, "from": "base model + dataset (finetune)"},
            {"artifact": "merged model", "id": self.merged_model, "from": "base model + adapter"},
            {"artifact": "eval", "id": f"PPL {self.merged_ppl:.2f}", "from": "merged model"},
        ]
