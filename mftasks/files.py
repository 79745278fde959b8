"""Durable file operations: write to a temporary name, fsync, rename; hash what was written.

A file that matters (dataset shard, manifest, checkpoint) only ever appears under its final name
complete.  Readers trust what a manifest vouches for (size + sha256), nothing else.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from .process import alive

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hex sha256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under root, root included."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write data to path via a temporary file in the same folder, fsynced, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write obj as indented JSON (sorted keys) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def copy_durable(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a file's bytes to dst (temporary name, fsync, rename)."""
    atomic_write_bytes(dst, Path(src).read_bytes())


def staging_dir(final: Path, tag: str = "tmp") -> Path:
    """A fresh hidden folder beside `final`, named after it and this process, for building into."""
    path = final.parent / f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove staging folders of `final` left by processes that no longer exist; return them."""
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.glob(f".{final.name}.*-*-*"):
        parts = p.name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if not alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def publish_dir(staged: Path, final: Path) -> None:
    """Move a fully written, fsynced folder to its final name, replacing what was there.

    The old folder is renamed aside first and deleted only after the new one is in place, so at
    every instant `final` is either the old complete folder or the new complete one (or, between
    two renames, absent: readers then see "no dataset", never a partial one).
    """
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(staged, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
