"""Checkpoints as MindFormers lays them out, each vouched for by a manifest written last.

    OUTPUT/checkpoint/rank_N/<prefix>_rank_N-<epoch>_<step>.ckpt
    OUTPUT/checkpoint/rank_N/<prefix>_rank_N-<epoch>_<step>.manifest.json   (written last, atomically)
    OUTPUT/checkpoint/rank_N/meta.json                                       (last epoch/step/file)

A reader trusts a `.ckpt` only if its manifest exists and the file's size and sha256 match it.
`save_total_limit` retention counts verified checkpoints of one prefix and never deletes the newest.
Which checkpoint a run starts from or resumes is chosen here too: `named_or_newest`, `resume_point`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ConfigError
from .files import (atomic_write_json, disk_full_as_error, fsync_path, remove_stale_temporaries, require_space,
                    sha256_file, staging_dir)

log = logging.getLogger("mftasks.checkpoint")

FORMAT = "mftasks-checkpoint"
FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
KINDS = ("full", "lora_adapter")
PREFIX = {"train": "mindformers", "finetune": "mindformers_finetune", "lora": "mindformers_lora"}  # by stage


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint file and what its manifest says about it."""

    path: Path
    manifest: dict

    @property
    def manifest_path(self) -> Path:
        return manifest_path_of(self.path)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def global_step(self) -> int:
        return self.manifest["global_step"]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def reference(self) -> dict:
        """How another manifest points at this checkpoint (lineage)."""
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "kind": self.kind,
                "global_step": self.global_step}


def rank_dir(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / "checkpoint" / f"rank_{rank}"


def manifest_path_of(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name.removesuffix(".ckpt") + MANIFEST_SUFFIX)


def file_name(prefix: str, rank: int, epoch: int, step_in_epoch: int) -> str:
    return f"{prefix}_rank_{rank}-{epoch}_{step_in_epoch}.ckpt"


def save(cell, output_dir: str | Path, rank: int, prefix: str, epoch: int, step_in_epoch: int,
         manifest: dict, choice_func=None, save_total_limit: int | None = None) -> CheckpointInfo:
    """Save `cell`'s parameters (optionally filtered by name) and commit the manifest last.

    MindSpore writes inside a hidden staging folder of the rank folder (`.<file>.tmp-<pid>-<hex8>/`, where
    its own `<stem>.tmp` also lands); the file is fsynced and renamed into place, then the manifest is
    written.  Stale temporaries of earlier, dead attempts are removed first.  A full disk (checked
    before, from the parameters' bytes, and caught at the real write) ends in a DiskFullError naming the
    file and the space needed, with nothing partial left: no temporary, and no checkpoint without its
    manifest.
    """
    import mindspore as ms

    folder = rank_dir(output_dir, rank)
    final = folder / file_name(prefix, rank, epoch, step_in_epoch)
    what = f"checkpoint {final.name}"
    needed = _estimate(cell, choice_func)
    with disk_full_as_error(final, what, needed):
        folder.mkdir(parents=True, exist_ok=True)
    remove_stale_checkpoint_temporaries(folder)
    require_space(folder, needed, what)
    staged = staging_dir(final)
    try:
        with disk_full_as_error(final, what, needed):
            tmp = staged / final.name
            ms.save_checkpoint(cell, str(tmp), choice_func=choice_func)
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "file": final.name, "rank": rank,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "size": final.stat().st_size,
            "sha256": sha256_file(final), "created": time.time(), **manifest}
    try:
        atomic_write_json(manifest_path_of(final), body)
    except BaseException:
        final.unlink(missing_ok=True)  # a checkpoint no manifest vouches for is a partial output: not kept
        raise
    atomic_write_json(folder / "meta.json", {"last_epoch": epoch, "last_step": step_in_epoch,
                                             "last_ckpt_file": final.name, "global_step": body["global_step"]})
    info = CheckpointInfo(final, body)
    if save_total_limit:
        apply_retention(folder, prefix, save_total_limit)
    return info


def _estimate(cell, choice_func) -> int:
    """Bytes the parameters `save_checkpoint` will write take at least (data only, a lower bound)."""
    try:
        params = cell.parameters_and_names()
    except AttributeError:
        return 0
    total = 0
    for name, p in params:
        name = getattr(p, "name", name)
        if choice_func is None or choice_func(name):
            total += int(getattr(p, "nbytes", 0) or 0)
    return total


# Temporaries of earlier versions of `save` (".<stem>.tmp-<pid>.ckpt", and MindSpore's ".<stem>.tmp-<pid>.tmp"
# beside it), which files.remove_stale_temporaries does not name.
_OLD_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)\.(ckpt|tmp)$")


def remove_stale_checkpoint_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries dead checkpoint writers left in a rank folder (theirs only: named by mftasks,
    writer process gone); return what was removed."""
    from .process import alive

    folder = Path(folder)
    removed = remove_stale_temporaries(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            m = _OLD_TEMPORARY.match(p.name)
            if m and p.is_file() and not p.is_symlink() and not alive(int(m["pid"])):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def read_manifest(ckpt: str | Path) -> dict:
    """The manifest beside a checkpoint file; CheckpointError when missing or unreadable."""
    ckpt = Path(ckpt)
    mpath = manifest_path_of(ckpt)
    if not mpath.is_file():
        raise CheckpointError(f"{ckpt}: no manifest ({mpath.name}) beside it, so nothing vouches for it "
                              "(a partial write, or not written by mftasks); use a checkpoint that has one")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{mpath}: unreadable manifest ({exc})") from None
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: not an mftasks checkpoint manifest of version {FORMAT_VERSION}")
    return m


def verify(ckpt: str | Path, hashes: bool = True) -> list[str]:
    """Problems with a checkpoint file against its manifest (empty list: verified).

    hashes=False checks presence and size only (cheap; used by retention)."""
    ckpt = Path(ckpt)
    try:
        m = read_manifest(ckpt)
    except CheckpointError as exc:
        return [str(exc)]
    if not ckpt.is_file():
        return [f"{ckpt}: missing"]
    size = ckpt.stat().st_size
    if size != m["size"]:
        return [f"{ckpt}: {size} bytes, manifest says {m['size']} (truncated or changed)"]
    if hashes and sha256_file(ckpt) != m["sha256"]:
        return [f"{ckpt}: sha256 does not match its manifest (corrupted or changed)"]
    return []


def load_verified(ckpt: str | Path) -> CheckpointInfo:
    """A checkpoint the caller named: verified, or CheckpointError saying what is wrong."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    if ckpt.is_dir():
        info, warnings = newest_verified(ckpt)
        for w in warnings:
            log.warning(w)
        if info is None:
            raise CheckpointError(f"{ckpt}: no verified checkpoint in this folder")
        return info
    problems = verify(ckpt)
    if problems:
        raise CheckpointError("; ".join(problems))
    return CheckpointInfo(ckpt, read_manifest(ckpt))


def listing(folder: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint with a readable manifest in a rank folder (or an output dir's rank_0), oldest first."""
    folder = _as_rank_folder(Path(folder))
    infos = []
    if not folder.is_dir():
        return infos
    for mpath in folder.glob(f"*{MANIFEST_SUFFIX}"):
        ckpt = mpath.with_name(mpath.name.removesuffix(MANIFEST_SUFFIX) + ".ckpt")
        try:
            infos.append(CheckpointInfo(ckpt, read_manifest(ckpt)))
        except CheckpointError:
            continue
    return sorted(infos, key=lambda i: (i.manifest["created"], i.global_step))


def newest_verified(folder: str | Path, kind: str | None = None, prefix: str | None = None
                    ) -> tuple[CheckpointInfo | None, list[str]]:
    """The newest checkpoint whose file matches its manifest, and a warning for each newer one skipped."""
    warnings = []
    for info in reversed(listing(folder)):
        if kind is not None and info.kind != kind:
            continue
        if prefix is not None and info.manifest.get("prefix") != prefix:
            continue
        problems = verify(info.path)
        if not problems:
            return info, warnings
        warnings.append(f"skipping checkpoint {info.path.name}: {problems[0]}; falling back to an older one")
    return None, warnings


def apply_retention(folder: Path, prefix: str, limit: int) -> list[Path]:
    """Delete the oldest verified checkpoints of `prefix` beyond `limit`; never the newest verified."""
    verified = [i for i in listing(folder) if i.manifest.get("prefix") == prefix
                and not verify(i.path, hashes=False)]
    removed = []
    for info in verified[:-limit] if limit < len(verified) else []:
        info.manifest_path.unlink(missing_ok=True)  # the manifest first: a reader never trusts a half-deleted set
        info.path.unlink(missing_ok=True)
        removed.append(info.path)
    return removed


# ---------------------------------------------------------------------- which checkpoint a run starts from
def named_or_newest(value, what: str, kind: str | None, output_dir: str | Path, rank: int) -> CheckpointInfo:
    """The checkpoint `value` names (verified, of `kind` when given), or with None/True/"" the newest
    verified one in this rank's folder under output_dir; `what` is the argument's name, for messages."""
    if value in (None, True, ""):
        folder = rank_dir(output_dir, rank)
        info, warnings = newest_verified(folder, kind=kind)
        for w in warnings:
            logging.getLogger("mftasks").warning(w)
        if info is None:
            need = "full-model " if kind == "full" else ""
            raise CheckpointError(f"no verified {need}checkpoint under {folder} for {what}; run train() first "
                                  f"or pass {what}=PATH")
        return info
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"{what}={value!r} must be a checkpoint path", where="Trainer")
    info = load_verified(value)
    if kind is not None and info.kind != kind:
        raise CheckpointError(f"{what}={value} is a {info.kind} checkpoint; a {kind} checkpoint is needed")
    return info


def resume_point(output_dir: str | Path, stage: str, rank: int, world: int, resume: bool,
                 resume_from_checkpoint: str | None = None) -> CheckpointInfo | None:
    """The checkpoint a `stage` run resumes: `resume_from_checkpoint` when given, else with `resume` the newest
    verified one of this stage that every rank has (ranks agree through a collective); None: start afresh."""
    if resume_from_checkpoint:
        info = load_verified(resume_from_checkpoint)
        if info.manifest.get("prefix") != PREFIX[stage]:
            raise CheckpointError(f"resume_from_checkpoint={resume_from_checkpoint} was written by "
                                  f"{info.manifest.get('stage')!r}, not by this {stage!r} run")
        return info
    if not resume:
        return None
    folder = rank_dir(output_dir, rank)
    info, warnings = newest_verified(folder, prefix=PREFIX[stage])
    for w in warnings:
        logging.getLogger("mftasks").warning(w)
    if world > 1:  # every rank must resume from the same step: the newest one all of them have verified
        from .distributed import all_reduce_min

        agreed = all_reduce_min(info.global_step if info is not None else -1)
        if agreed >= 0 and (info is None or info.global_step != agreed):
            logging.getLogger("mftasks").warning(
                "rank %d: newest verified checkpoint is step %s, but another rank's is step %d: resuming "
                "every rank from step %d", rank, info.global_step if info else None, agreed, agreed)
            info = verified_at(folder, PREFIX[stage], agreed)
        elif agreed < 0:
            info = None
    if info is None:
        where = f"{folder} (or another rank's folder)" if world > 1 else f"{folder}"
        raise CheckpointError(f"resume_training=True but {where} has no verified {stage} checkpoint to resume "
                              "from; start without resume_training")
    return info


def verified_at(folder: str | Path, prefix: str, step: int) -> CheckpointInfo | None:
    """The newest verified checkpoint of `prefix` at global step `step` in a rank folder, or None."""
    for info in reversed(listing(folder)):
        if info.manifest.get("prefix") == prefix and info.global_step == step and not verify(info.path):
            return info
    return None


def _as_rank_folder(folder: Path) -> Path:
    if (folder / "checkpoint").is_dir():
        return rank_dir(folder, 0)
    return folder
