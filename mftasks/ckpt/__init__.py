"""Checkpoint post-processing: sets of per-rank checkpoints, merges, formats and imports.

    set_of(out) / newest_verified_set(out)           the per-rank checkpoints of one step, checked
    merge_replicas(out, "full.ckpt")                  data-parallel ranks -> one checkpoint (weights only)
    merge_sliced(rank_files, strategy, "full.ckpt")   model/pipeline-parallel slices -> one checkpoint
    transform(rank_files, src, dst, out_dir)          re-slice for another strategy
    merge_lora(base, adapter, "merged.ckpt")          fold a LoRA adapter into its base
    convert("x.ckpt", "x.safetensors") / import_hf_gpt2(path, out, config)

Every output is written to a temporary name, fsynced and linked into place (never over an existing
file), with a manifest in mftasks.checkpoint's format written last.
"""
from mftasks.ckpt.formats import convert, gpt2_shapes, hf_gpt2_table, import_hf_gpt2, load_weights, save_weights
from mftasks.ckpt.lora_merge import already_merged, merge_lora
from mftasks.ckpt.replicas import merge_replicas
from mftasks.ckpt.sets import CheckpointSet, newest_verified_set, set_of, sets_in
from mftasks.ckpt.sliced import merge_set, merge_sliced, transform
from mftasks.ckpt.strategy import Layout, read_strategy, write_strategy

__all__ = [
    "CheckpointSet", "set_of", "sets_in", "newest_verified_set",
    "merge_replicas", "merge_sliced", "merge_set", "transform", "merge_lora", "already_merged",
    "convert", "import_hf_gpt2", "load_weights", "save_weights", "gpt2_shapes", "hf_gpt2_table",
    "Layout", "read_strategy", "write_strategy",
]
