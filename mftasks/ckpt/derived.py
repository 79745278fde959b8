"""Checkpoints derived from others (merged, converted, imported), published the way mftasks.checkpoint saves.

The weights are written inside a hidden staging folder beside the output (`.<name>.tmp-<pid>-<hex8>/`, so
MindSpore's own `<stem>.tmp` lands there too), fsynced, then hard-linked to the final name (a link never
replaces an existing file), and the manifest is written last.  Any failure removes what this call wrote:
no partial output, and nothing that existed before is ever overwritten.  A full disk ends in a
DiskFullError naming the path and the space needed (checked before writing where the size is known, and
caught at the real write too); the next run removes the staging folders its own dead attempts left.

A manifest vouches only for what was verified: an output derived from a file no manifest vouches for is
written without one (`publish(..., manifest=None)`), so it stays unverified.
"""
from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from .. import checkpoint as ckpt
from ..errors import ConfigError, OutputExistsError
from ..files import (atomic_write_json, disk_full_as_error, fsync_path, overlap_problems, remove_stale_temporaries,
                     require_space, sha256_file, staging_dir)
from .formats import FORMATS, format_of

# Manifest keys that describe one file rather than the weights' history.
PER_FILE_KEYS = ("format", "format_version", "file", "rank", "size", "sha256", "created", "world_size")

# Room kept for the manifest (a few kB of JSON) and filesystem rounding on top of an output's estimate.
MANIFEST_ROOM = 64 * 1024


def check_free(out_path: str | Path) -> None:
    """OutputExistsError if out_path or its manifest exists; ConfigError if its suffix is no known format."""
    out_path = Path(out_path)
    format_of(out_path)
    for p in (out_path, ckpt.manifest_path_of(out_path)):
        if p.exists() or p.is_symlink():
            raise OutputExistsError(f"{p} already exists and is never overwritten: choose another output path "
                                    "or remove it first")


def output_problems(out_path: str | Path, inputs, flag: str = "--output", folder: bool = False) -> list[str]:
    """Every problem with writing `out_path` from `inputs`, before anything is written: an unknown suffix
    (files), an output that is an input, lies inside one or contains one (refused whatever the flags), and a
    parent that is a file."""
    out_path = Path(out_path)
    problems = []
    if not folder and out_path.suffix not in FORMATS:
        problems.append(f"{flag} {out_path}: unknown checkpoint format {out_path.suffix or '(no suffix)'!r}; name "
                        "the file *.ckpt (MindSpore) or *.safetensors")
    problems += overlap_problems(out_path, [i for i in inputs if i is not None], flag)
    parent = out_path.expanduser().absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        problems.append(f"{flag} {out_path}: {parent} is a file, not a folder; choose another path")
    return problems


def prepare_output(out_path: str | Path, inputs, flag: str = "--output", where: str = "the checkpoint output") -> Path:
    """Refuse a bad output (ConfigError listing every problem; OutputExistsError when it exists), then remove
    the staging folders and temporaries that this output's own earlier, dead attempts left beside it."""
    out_path = Path(out_path)
    ConfigError.raise_if(output_problems(out_path, inputs, flag), where)
    check_free(out_path)
    remove_stale_temporaries(out_path.parent, out_path.name)
    remove_stale_temporaries(out_path.parent, ckpt.manifest_path_of(out_path).name)
    return out_path


def lineage(manifest: dict) -> dict:
    """A manifest's history (model, data, tokenizer, parents, earlier merges) without its per-file fields."""
    return {k: v for k, v in manifest.items() if k not in PER_FILE_KEYS}


def has_manifest(path: str | Path) -> bool:
    return ckpt.manifest_path_of(Path(path)).is_file()


def estimate(weights: dict) -> int:
    """Bytes a checkpoint of these tensors takes at least: their data plus a little per entry (a lower bound
    of the real size, so a pre-check never refuses a write that would have fitted)."""
    total = 0
    for name, value in weights.items():
        total += int(getattr(value, "nbytes", 0)) + len(name)
    return total


def publish(out_path: str | Path, write: Callable[[Path], str | None], manifest: dict | None,
            needed: int | None = None) -> ckpt.CheckpointInfo:
    """Run `write(tmp)`, fsync, link tmp to out_path (never replacing), then write the manifest.

    `write` may return the sha256 of the bytes it wrote (saves re-reading them); otherwise the file is
    hashed here.  The manifest gets the mftasks.checkpoint per-file fields; `manifest` supplies the rest.
    manifest=None writes no manifest (an output of unverified inputs stays unverified); the returned info
    then carries the file's size and sha256 only.  `needed` (bytes, a lower bound) is checked against the
    free space first.
    """
    out_path = Path(out_path)
    check_free(out_path)
    what = f"checkpoint {out_path.name}"
    with disk_full_as_error(out_path, what, needed or 0):
        out_path.parent.mkdir(parents=True, exist_ok=True)
    if needed is not None:
        require_space(out_path.parent, needed + (MANIFEST_ROOM if manifest is not None else 0), what)
    staged = staging_dir(out_path)
    tmp = staged / out_path.name
    linked = False
    try:
        with disk_full_as_error(out_path, what, needed or 0):
            sha = write(tmp)
            os.chmod(tmp, 0o400)  # read-only, as MindSpore creates checkpoints
            fsync_path(tmp)
            size = tmp.stat().st_size
            sha = sha or sha256_file(tmp)
            _link_new(tmp, out_path)
            linked = True
            fsync_path(out_path.parent)
        body = {"file": out_path.name, "size": size, "sha256": sha}
        if manifest is not None:
            body = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "rank": 0, "world_size": 1,
                    **manifest, **body, "created": time.time()}
            atomic_write_json(ckpt.manifest_path_of(out_path), body)
    except BaseException:
        if linked:
            out_path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
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
