"""Fold a LoRA adapter into its base checkpoint: W' = W + (alpha / rank) * B @ A on the targeted weights.

    merge_lora(base, adapter, "merged.ckpt")   # kind 'full', manifest records merged_lora
    merge_lora(base, adapter, "merged.ckpt")   # again: "already merged", returns the existing path

The adapter's manifest names the base it was trained on (path and sha256); another base is refused.
Merging is safe to run again: a base whose manifest already records this adapter (by sha256), or an
output that already holds this merge, is returned as it is.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .. import checkpoint as ckpt
from ..errors import CheckpointError
from .derived import check_free, lineage, publish
from .formats import as_numpy, load_weights, save_weights

log = logging.getLogger("mftasks.ckpt")


def already_merged(base: str | Path, adapter: str | Path, out_path: str | Path | None = None) -> Path | None:
    """The checkpoint that already holds this adapter merged into this base (base itself or out_path), or None."""
    return _existing_merge(*_full_and_adapter(base, adapter), out_path)


def merge_lora(base: str | Path, adapter: str | Path, out_path: str | Path) -> Path:
    """A full checkpoint with the adapter folded in (or the existing one, when already merged); returns its path."""
    from ..model import LoraConfig, lora_filter, merge_lora_state

    out_path = Path(out_path)
    base_info, adapter_info = _full_and_adapter(base, adapter)
    existing = _existing_merge(base_info, adapter_info, out_path)
    if existing is not None:
        log.info("already merged: %s holds adapter %s", existing, adapter)
        return existing
    check_free(out_path)
    ref = adapter_info.manifest.get("base") or {}
    if ref.get("sha256") != base_info.sha256:
        raise CheckpointError(
            f"adapter {adapter_info.path} was trained on base {ref.get('path', '?')} (sha256 "
            f"{str(ref.get('sha256'))[:16]}), but the given base {base_info.path} has sha256 {base_info.sha256[:16]}: "
            "pass the base checkpoint the adapter was trained on")
    config = LoraConfig(**adapter_info.manifest["lora_config"])
    base_weights = {n: as_numpy(v) for n, v in load_weights(base_info.path, model_only=True).items()}
    adapter_weights = {n: as_numpy(v) for n, v in load_weights(adapter_info.path, model_only=True).items()
                       if lora_filter(n)}
    if not adapter_weights:
        raise CheckpointError(f"{adapter_info.path} holds no LoRA weights (lora_a_* / lora_b_*)")
    merged = merge_lora_state(base_weights, adapter_weights, config)
    history = {k: v for k, v in lineage(adapter_info.manifest).items() if k not in ("base", "lora_config")}
    manifest = {**history, "kind": "full", "parent": base_info.reference(), "merged_lora": {
        "adapter": {"path": str(adapter_info.path.resolve()), "sha256": adapter_info.sha256},
        "base": {"path": str(base_info.path.resolve()), "sha256": base_info.sha256},
        "scale": config.scale, "lora_config": config.to_dict()}}
    info = publish(out_path, lambda tmp: save_weights(merged, tmp), manifest)
    log.info("merged adapter %s (scale %g, targets %s) into %s -> %s", adapter_info.path.name, config.scale,
             ",".join(config.targets), base_info.path.name, out_path)
    return info.path


def _existing_merge(base_info: ckpt.CheckpointInfo, adapter_info: ckpt.CheckpointInfo, out_path) -> Path | None:
    done = base_info.manifest.get("merged_lora") or {}
    if done.get("adapter", {}).get("sha256") == adapter_info.sha256:
        return base_info.path
    if out_path is None or not ckpt.manifest_path_of(Path(out_path)).is_file() or ckpt.verify(out_path):
        return None
    done = ckpt.read_manifest(out_path).get("merged_lora") or {}
    if (done.get("adapter", {}).get("sha256") == adapter_info.sha256
            and done.get("base", {}).get("sha256") == base_info.sha256):
        return Path(out_path)
    return None


def _full_and_adapter(base, adapter) -> tuple[ckpt.CheckpointInfo, ckpt.CheckpointInfo]:
    base_info, adapter_info = ckpt.load_verified(base), ckpt.load_verified(adapter)
    problems = []
    if base_info.kind != "full":
        problems.append(f"base {base_info.path} is a {base_info.kind} checkpoint; the base must be full model weights")
    if adapter_info.kind != "lora_adapter":
        problems.append(f"adapter {adapter_info.path} is a {adapter_info.kind} checkpoint, not a LoRA adapter")
    if problems:
        raise CheckpointError("cannot merge:\n" + "\n".join(f"  - {p}" for p in problems))
    return base_info, adapter_info
