"""Checkpoints derived from others (merged, converted, imported), published the way mftasks.checkpoint saves.

The weights go to a hidden temporary name beside the output, are fsynced, then hard-linked to the final
name (a link never replaces an existing file), and the manifest is written last.  Any failure removes
what this call wrote: no partial output, and nothing that existed before is ever overwritten.
"""
from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path
from typing import Callable

from .. import checkpoint as ckpt
from ..errors import CheckpointError, OutputExistsError
from ..files import atomic_write_json, fsync_path, sha256_file
from .formats import format_of

# Manifest keys that describe one file rather than the weights' history.
PER_FILE_KEYS = ("format", "format_version", "file", "rank", "size", "sha256", "created", "world_size")


def check_free(out_path: str | Path) -> None:
    """OutputExistsError if out_path or its manifest exists; ConfigError if its suffix is no known format."""
    out_path = Path(out_path)
    format_of(out_path)
    for p in (out_path, ckpt.manifest_path_of(out_path)):
        if p.exists() or p.is_symlink():
            raise OutputExistsError(f"{p} already exists and is never overwritten: choose another output path "
                                    "or remove it first")


def lineage(manifest: dict) -> dict:
    """A manifest's history (model, data, tokenizer, parents, earlier merges) without its per-file fields."""
    return {k: v for k, v in manifest.items() if k not in PER_FILE_KEYS}


def source_lineage(path: str | Path) -> tuple[dict, dict]:
    """(lineage, reference) of a source checkpoint: verified against its manifest when it has one.

    A file without a manifest (written outside mftasks) is hashed and taken as a full checkpoint with no
    known history; the reference then says `"manifest": false`.
    """
    path = Path(path)
    if ckpt.manifest_path_of(path).is_file():
        info = ckpt.load_verified(path)
        return lineage(info.manifest), {"path": str(path.resolve()), "sha256": info.sha256}
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    bare = {"prefix": path.stem, "stage": None, "kind": "full", "global_step": None, "epoch": None,
            "step_in_epoch": None, "loss": None, "model_config": None, "pet_method": "", "training_args": None,
            "dataset_id": None, "dataset": None, "tokenizer": None, "parent": None}
    return bare, {"path": str(path.resolve()), "sha256": sha256_file(path), "manifest": False}


def publish(out_path: str | Path, write: Callable[[Path], str | None], manifest: dict) -> ckpt.CheckpointInfo:
    """Run `write(tmp)`, fsync, link tmp to out_path (never replacing), then write the manifest.

    `write` may return the sha256 of the bytes it wrote (saves re-reading them); otherwise the file is
    hashed here.  The manifest gets the mftasks.checkpoint per-file fields; `manifest` supplies the rest.
    """
    out_path = Path(out_path)
    check_free(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{out_path.suffix}")
    linked = False
    try:
        sha = write(tmp)
        os.chmod(tmp, 0o400)  # read-only, as MindSpore creates checkpoints
        fsync_path(tmp)
        size = tmp.stat().st_size
        sha = sha or sha256_file(tmp)
        _link_new(tmp, out_path)
        linked = True
        fsync_path(out_path.parent)
        body = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "rank": 0, "world_size": 1,
                **manifest, "file": out_path.name, "size": size, "sha256": sha, "created": time.time()}
        atomic_write_json(ckpt.manifest_path_of(out_path), body)
    except BaseException:
        if linked:
            out_path.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return ckpt.CheckpointInfo(out_path, body)


def _link_new(tmp: Path, final: Path) -> None:
    """Give tmp the name `final`, failing (OutputExistsError) if that name was taken meanwhile."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputExistsError(f"{final} appeared while it was being written; nothing was overwritten") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if final.exists():  # a filesystem without hard links: check, then rename
            raise OutputExistsError(f"{final} appeared while it was being written; nothing was overwritten") from None
        os.rename(tmp, final)
