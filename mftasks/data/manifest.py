"""A prepared dataset's manifest: what it holds, where it came from, and how to check it.

Layout of a dataset folder:
    manifest.json          written last; the only thing a reader trusts
    tokenizer.model        the sentencepiece model (sha256 in the manifest)
    train/train.mindrecord[N] (+ .db index files)
    eval/eval.mindrecord[N]   (+ .db)
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..files import sha256_file

FORMAT = "mftasks-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "eval")


def read(folder: str | Path) -> dict:
    """The manifest of a prepared dataset folder; DataError if there is none or it is unreadable."""
    folder = Path(folder)
    path = folder / MANIFEST
    hint = "prepare one with `mftasks data prepare --input ... --output DIR`"
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist; {hint}")
    if not path.is_file():
        raise DataError(f"{folder} is not a prepared dataset (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an mftasks dataset manifest (format is not '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r} is not supported "
                        f"(this mftasks reads {FORMAT_VERSION}); prepare the dataset again")
    return manifest


def root_of(folder: str | Path, split: str) -> Path:
    """The prepared dataset that `folder` names for reading its `split`: the folder itself when it holds the
    manifest, or its parent when `folder` is that dataset's `split` folder (MindFormers' way:
    `--train_dataset DATA/train --eval_dataset DATA/eval`).  DataError when it is neither, or when it is
    the other split's folder."""
    folder = Path(folder)
    parent = folder.parent
    if folder.name not in SPLITS or (folder / MANIFEST).is_file() or not (parent / MANIFEST).is_file():
        read(folder)
        return folder
    read(parent)
    if folder.name != split:
        raise DataError(f"{folder} is the {folder.name} split of the dataset {parent}, but the {split} split is "
                        f"read here: pass {parent / split} (or the dataset folder {parent})")
    return parent


def is_dataset(folder: str | Path) -> bool:
    """True when folder holds an mftasks manifest (verified or not)."""
    try:
        read(folder)
    except DataError:
        return False
    return True


def foreign_files(folder: str | Path, manifest: dict) -> list[str]:
    """Paths in a dataset folder (relative, sorted) that its manifest does not list: not ours to delete."""
    folder = Path(folder)
    ours = {MANIFEST, manifest.get("tokenizer", {}).get("file", "")}
    for split in SPLITS:
        for shard in manifest.get("splits", {}).get(split, {}).get("shards", []):
            ours.add(shard.get("file", ""))
    folders = {str(parent) for f in ours for parent in Path(f).parents if str(parent) != "."}
    return sorted(rel for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*"))
                  if rel not in ours and rel not in folders)


def verify(folder: str | Path, manifest: dict | None = None, hashes: bool = True) -> list[str]:
    """Every problem with the dataset's files against its manifest (empty list: verified)."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read(folder)
    problems = []
    entries = [manifest["tokenizer"]] + [s for split in SPLITS for s in manifest["splits"][split]["shards"]]
    for entry in entries:
        path = folder / entry["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(f"{path}: size {size} bytes, manifest says {entry['size']} (truncated or changed)")
        elif hashes and sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 does not match the manifest (corrupted or changed)")
    return problems


def data_files(folder: str | Path, manifest: dict, split: str) -> list[str]:
    """The MindRecord data files of a split (not the .db indexes), in shard order."""
    return [str(Path(folder) / s["file"]) for s in manifest["splits"][split]["shards"]
            if not s["file"].endswith(".db")]
