"""What a training run may write under its output_dir, checked before it writes anything.

    problems(output_dir, datasets)          a folder (or a new one) that holds no dataset, nor lies in one
    old_checkpoints(...)                    the earlier run's checkpoints that overwrite_output_dir replaces
    check_start_not_deletable(...)          the checkpoint a run starts from is not among those it may delete
    foreign_files(folder, names)            files mftasks did not write under names the run will write
    lineage(output_dir, manifest, dataset, start)   dataset, tokenizer (copied here) and parent of checkpoints
"""
from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt
from .errors import CheckpointError, ConfigError
from .files import copy_durable, overlap_problems, sha256_file


def problems(output_dir, dataset_paths) -> list[str]:
    """output_dir must be a folder (or not exist yet, under a folder) and hold no dataset, nor lie in one."""
    out = Path(output_dir).expanduser()
    probe = out
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == out else f"lies under {probe}, which is a file"
        return [f"output_dir={output_dir}: {where}, not a folder; set output_dir (--output_dir or the run "
                "config's output_dir) to a new or existing folder"]
    if probe.is_symlink() and not probe.exists():
        return [f"output_dir={output_dir}: {probe} is a dangling symbolic link; choose another folder"]
    return overlap_problems(output_dir, dataset_paths, flag="output_dir")


def old_checkpoints(output_dir, stage: str, rank: int, resume_from, overwrite: bool) -> list[ckpt.CheckpointInfo]:
    """The old run's checkpoints that overwrite_output_dir will remove (removed later, once every check
    passed); ConfigError when there are some and overwrite_output_dir is off."""
    if resume_from is not None:
        return []
    folder = ckpt.rank_dir(output_dir, rank)
    existing = [i for i in ckpt.listing(folder) if i.manifest.get("prefix") == ckpt.PREFIX[stage]]
    if existing and not overwrite:
        raise ConfigError(
            f"{folder} already holds {len(existing)} {stage} checkpoint(s) "
            f"(newest {existing[-1].path.name}); pass resume_training=True to continue that run, "
            "overwrite_output_dir=True to start over, or choose another output_dir", where="Trainer")
    return existing


def remove_own_checkpoint(info: ckpt.CheckpointInfo) -> None:
    """overwrite_output_dir: remove an old checkpoint of this run's stage (one its mftasks manifest claims),
    the manifest first so that a reader never trusts a half-deleted pair."""
    info.manifest_path.unlink(missing_ok=True)
    info.path.unlink(missing_ok=True)


def check_start_not_deletable(output_dir, stage: str, rank: int, start) -> None:
    """The checkpoint a run starts from must not be among the files it may delete: its own stage's
    checkpoints in its rank folder (overwrite_output_dir removes them, save_total_limit prunes them).
    A checkpoint elsewhere under output_dir (e.g. train's, for a finetune) is never touched."""
    if start is None:
        return
    own = ckpt.rank_dir(output_dir, rank).resolve()
    if start.path.resolve().parent == own and start.manifest.get("prefix") == ckpt.PREFIX[stage]:
        raise ConfigError(f"output_dir {output_dir} holds the checkpoint this {stage} run starts from "
                          f"({start.path}) among the {stage} checkpoints that overwrite_output_dir and "
                          "save_total_limit delete; continue that run with resume_training=True, or write to "
                          "another output_dir", where="Trainer")


def foreign_files(folder: Path, names: list[str]) -> list[str]:
    """The planned checkpoint names under which `folder` already holds something mftasks did not write: a file
    with no mftasks manifest beside it, or a manifest-named file that is not an mftasks manifest."""
    found = []
    for name in names:
        path = folder / name
        mpath = ckpt.manifest_path_of(path)
        for p in (path, mpath):
            if not (p.exists() or p.is_symlink()):
                continue
            try:
                ckpt.read_manifest(path)
            except CheckpointError:
                found.append(f"{p} is not an mftasks checkpoint file, but this run would write its own under "
                             "that name; move it away or choose another output_dir")
                break
    return found


def lineage(output_dir, manifest: dict, dataset: str, start: ckpt.CheckpointInfo | None) -> dict:
    """Dataset id, tokenizer (copied into output_dir so checkpoints outlive the dataset), parent."""
    src = Path(dataset) / manifest["tokenizer"]["file"]
    sha = manifest["tokenizer"]["sha256"]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "tokenizer.model"
    if dest.is_file() and sha256_file(dest) != sha:
        dest = out / f"tokenizer-{sha[:12]}.model"
    if not dest.is_file():
        copy_durable(src, dest)
    return {"dataset_id": manifest["dataset_id"], "dataset": str(Path(dataset).resolve()),
            "tokenizer": {"path": str(dest.resolve()), "sha256": sha},
            "parent": start.reference() if start is not None else None}
