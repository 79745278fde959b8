"""Fold a LoRA adapter into its base checkpoint: W' = W + (alpha / rank) * B @ A on the targeted weights.

    merge_lora(base, adapter, "merged.ckpt")   # kind 'full', manifest records merged_lora
    merge_lora(base, adapter, "merged.ckpt")   # again: "already merged", returns the existing path

The adapter's manifest names the base it was trained on (path and sha256); another base is refused.
Merging is safe to run again: an output that already holds this merge is returned as it is.  A base whose
manifest already records this adapter (by sha256) is not merged twice: the output asked for is then a
verified copy of that base (bytes checked against its manifest, manifest carried over), so the output
always exists when merge_lora returns.
"""
from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import checkpoint as ckpt
from ..errors import CheckpointError, ConfigError
from ..files import sha256_file
from .derived import estimate, lineage, output_problems, prepare_output, publish
from .formats import as_numpy, format_of, load_weights, save_weights

log = logging.getLogger("mftasks.ckpt")


def already_merged(base: str | Path, adapter: str | Path, out_path: str | Path | None = None) -> Path | None:
    """The checkpoint that already holds this adapter merged into this base (base itself or out_path), or None."""
    base_info, adapter_info = _full_and_adapter(base, adapter)
    if out_path is not None and _holds_merge(base_info, adapter_info, Path(out_path)):
        return Path(out_path)
    return base_info.path if _base_holds(base_info, adapter_info) else None


def merge_lora(base: str | Path, adapter: str | Path, out_path: str | Path) -> Path:
    """A full checkpoint with the adapter folded in at out_path (or out_path as it is, when it already holds
    this merge); returns out_path."""
    return merge_lora_status(base, adapter, out_path)[0]


def merge_lora_status(base: str | Path, adapter: str | Path, out_path: str | Path) -> tuple[Path, str]:
    """merge_lora, and what it did: "merged", "exists" (out_path already held this merge: nothing written)
    or "copied" (the base already had this adapter merged in: out_path is a verified copy of it)."""
    from ..model import LoraConfig, lora_filter, merge_lora_state

    out_path = Path(out_path)
    ConfigError.raise_if(output_problems(out_path, [base, adapter]), "mftasks ckpt merge-lora")
    base_info, adapter_info = _full_and_adapter(base, adapter)
    if _holds_merge(base_info, adapter_info, out_path):
        log.info("already merged: %s holds adapter %s", out_path, adapter)
        return out_path, "exists"
    prepare_output(out_path, [base_info.path, adapter_info.path], where="mftasks ckpt merge-lora")
    if _base_holds(base_info, adapter_info):
        _copy_of(base_info, out_path)
        log.info("%s already has adapter %s merged in: copied it to %s", base_info.path, adapter, out_path)
        return out_path, "copied"
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
    publish(out_path, lambda tmp: save_weights(merged, tmp), manifest, needed=estimate(merged))
    log.info("merged adapter %s (scale %g, targets %s) into %s -> %s", adapter_info.path.name, config.scale,
             ",".join(config.targets), base_info.path.name, out_path)
    return out_path, "merged"


def _base_holds(base_info: ckpt.CheckpointInfo, adapter_info: ckpt.CheckpointInfo) -> bool:
    done = base_info.manifest.get("merged_lora") or {}
    return done.get("adapter", {}).get("sha256") == adapter_info.sha256


def _holds_merge(base_info: ckpt.CheckpointInfo, adapter_info: ckpt.CheckpointInfo, out_path: Path) -> bool:
    """True when out_path is a verified checkpoint of this merge: base + adapter, or a copy of a base that
    already had this adapter merged in."""
    if not ckpt.manifest_path_of(out_path).is_file() or ckpt.verify(out_path):
        return False
    m = ckpt.read_manifest(out_path)
    if _base_holds(base_info, adapter_info) and m.get("sha256") == base_info.sha256:
        return True
    done = m.get("merged_lora") or {}
    return (done.get("adapter", {}).get("sha256") == adapter_info.sha256
            and done.get("base", {}).get("sha256") == base_info.sha256)


def _copy_of(info: ckpt.CheckpointInfo, out_path: Path) -> None:
    """A verified copy of `info` at out_path (same bytes, its manifest carried over with `copied_from`)."""
    if format_of(out_path) != format_of(info.path):
        weights = load_weights(info.path)
        publish(out_path, lambda tmp: save_weights(weights, tmp),
                {**lineage(info.manifest), "converted_from": {"path": str(info.path.resolve()),
                                                             "sha256": info.sha256, "format": format_of(info.path)}},
                needed=estimate(weights))
        return

    def copy(tmp: Path) -> str:
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(sha256_file, info.path)
            shutil.copyfile(info.path, tmp)
            sha = digest.result()
        if sha != info.sha256 or tmp.stat().st_size != info.manifest["size"]:
            raise CheckpointError(f"{info.path} changed while it was being copied to {out_path} (sha256 or size no "
                                  "longer match its manifest); nothing was written")
        return sha

    publish(out_path, copy, {**lineage(info.manifest), "copied_from": {"path": str(info.path.resolve()),
                                                                        "sha256": info.sha256}},
            needed=info.manifest["size"])


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
