"""The pipeline's lineage table (mftasks.lineage)."""
from mftasks.lineage import Lineage


def test_lineage_rows_follow_the_chain_with_short_dataset_ids():
    lineage = Lineage(tokenizer="data/pretrain/tokenizer.model", pretrain_corpus="corpus/pretrain",
                      finetune_corpus="corpus/finetune", pretrain_dataset_id="0123456789abcdef0123",
                      finetune_dataset_id="fedcba9876543210fedc", train_checkpoint="train/rank_0/gpt2_rank_0-1_60.ckpt",
                      base_model="published/base.ckpt", adapter="lora/rank_0/lora_rank_0-1_60.ckpt",
                      merged_model="published/merged.ckpt", merged_ppl=21.456)
    assert lineage.rows() == [
        {"artifact": "tokenizer", "id": "data/pretrain/tokenizer.model", "from": "pretraining corpus"},
        {"artifact": "dataset (pretrain)", "id": "0123456789abcdef", "from": "corpus/pretrain"},
        {"artifact": "dataset (finetune)", "id": "fedcba9876543210", "from": "corpus/finetune"},
        {"artifact": "checkpoint (train)", "id": "train/rank_0/gpt2_rank_0-1_60.ckpt", "from": "dataset (pretrain)"},
        {"artifact": "base model", "id": "published/base.ckpt", "from": "checkpoint (train), merged replicas"},
        {"artifact": "adapter (LoRA)", "id": "lora/rank_0/lora_rank_0-1_60.ckpt",
         "from": "base model + dataset (finetune)"},
        {"artifact": "merged model", "id": "published/merged.ckpt", "from": "base model + adapter"},
        {"artifact": "eval", "id": "PPL 21.46", "from": "merged model"},
    ]
