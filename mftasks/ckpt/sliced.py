"""Sliced checkpoints (model / pipeline parallel): merge them whole, or re-slice them for another layout.

    merge_sliced([r0, r1, r2, r3], ["strategy.ckpt"], "full.ckpt")        # MindSpore's merge_sliced_parameter
    transform([r0, r1], ["src.ckpt"], "dst_strategy.ckpt", "out_dir")     # MindSpore's transform_checkpoint_by_rank
    merge_set("output", "full.ckpt")                                       # an output dir: sliced or replicas

Rank files are given in rank order.  A rank file with a manifest beside it is verified against it (and
its rank and step checked); files written outside mftasks are accepted bare and hashed.  Every problem
with the shards and the strategy (missing parameter, device count, slice shapes naming the parameter and
both shapes, merged shapes against the model config) is reported at once, before anything is written.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import checkpoint as ckpt
from ..errors import CheckpointError, ConfigError, OutputExistsError
from ..files import (atomic_write_json, disk_full_as_error, fsync_tree, remove_stale_temporaries, require_space,
                     sha256_file, staging_dir)
from .derived import estimate, lineage, output_problems, prepare_output, publish
from .formats import is_model_weight, load_weights, save_weights, shape_problems
from .strategy import Layout, device_count, read_strategy


def merge_sliced(rank_files, strategy_files, out_path: str | Path, model_config=None) -> Path:
    """One complete checkpoint (model weights only) from the slices of every rank; returns out_path.

    `model_config` (a GPT2Config) checks the merged shapes when the rank manifests do not name one.  The
    output gets a manifest only when every rank file had one that vouched for it: merging rank files no
    manifest vouches for gives an unverified file (no manifest), as `convert` does.
    """
    out_path = Path(out_path)
    prepare_output(out_path, [*_as_list(rank_files), *_as_list(strategy_files)], where="mftasks ckpt merge-sliced")
    files = _existing(rank_files)
    layouts = read_strategy(strategy_files)
    with ThreadPoolExecutor(max_workers=1) as pool:  # hash the rank files while this thread parses them
        checked = pool.submit(_rank_sources, files)
        try:
            shards = [load_weights(f, model_only=True) for f in files]
        except CheckpointError:
            checked.result()  # a truncated or changed file: its manifest check says it best
            raise
        sources = checked.result()
    problems = shard_problems(layouts, shards, files)
    _raise(problems, "the shards do not match the strategy")
    merged = _merge_slices(shards, layouts)
    history = sources["lineage"]
    cfg = _model_config(model_config, history)
    if cfg is not None and history.get("kind", "full") == "full":
        _raise(shape_problems(merged, cfg, "the merged checkpoint"),
               "the merged weights do not fit the model (the strategy does not match these shards?)")
    manifest = {**history, "merged_from": sources["refs"],
                "strategy_files": [{"path": str(Path(s).resolve()), "sha256": sha256_file(s)}
                                   for s in _as_list(strategy_files)]}
    if cfg is not None:
        manifest["model_config"] = cfg.to_dict()
    if sources["bare"]:
        manifest = None  # nothing vouched for these bytes: the merge of them stays unverified
    return publish(out_path, lambda tmp: save_weights(merged, tmp), manifest, needed=estimate(merged)).path


def merge_set(output_dir: str | Path, out_path: str | Path, global_step: int | None = None,
              prefix: str | None = None) -> Path:
    """Merge one step of an output dir: merge_sliced when its strategy files slice it, else merge_replicas."""
    from .replicas import merge_replicas
    from .sets import set_of

    ConfigError.raise_if(output_problems(out_path, [output_dir]), "mftasks ckpt merge")
    cset = set_of(output_dir, global_step, prefix, hashes=False)
    if cset.strategy_files and any(lay.sliced for lay in read_strategy(cset.strategy_files).values()):
        return merge_sliced(cset.files, cset.strategy_files, out_path)
    return merge_replicas(output_dir, out_path, cset.global_step, cset.prefix)


def transform(rank_files, src_strategy, dst_strategy, out_dir: str | Path) -> Path:
    """Re-slice the ranks for another strategy (None: one unsliced rank) into a new output dir.

    out_dir gets MindFormers' layout: checkpoint/rank_N/<prefix>_rank_N-<epoch>_<step>.ckpt with manifests
    (`transformed_from` names the sources) and strategy/ckpt_strategy_rank_N.ckpt, so `set_of(out_dir)`
    and `merge_set(out_dir, ...)` work on it.  Every entry MindSpore keeps (optimizer state too) is kept.
    """
    import mindspore as ms

    out_dir = Path(out_dir)
    inputs = [*_as_list(rank_files), *_as_list(src_strategy), *(_as_list(dst_strategy) if dst_strategy else [])]
    ConfigError.raise_if(output_problems(out_dir, inputs, folder=True), "mftasks ckpt transform")
    if out_dir.exists() or out_dir.is_symlink():
        raise OutputExistsError(f"{out_dir} already exists and is never overwritten: choose another output dir")
    remove_stale_temporaries(out_dir.parent, out_dir.name)
    files = _existing(rank_files)
    src_layouts = read_strategy(src_strategy)
    dst_layouts = read_strategy(dst_strategy) if dst_strategy is not None else None
    if device_count(src_layouts) != len(files):
        raise CheckpointError(_device_mismatch(src_layouts, len(files)))
    sources = _rank_sources(files)
    history = sources["lineage"]
    world = device_count(dst_layouts) if dst_layouts else 1
    needed = sum(f.stat().st_size for f in files)  # the same entries, re-sliced: about the sources' size
    what = f"the transformed checkpoint {out_dir}"
    with disk_full_as_error(out_dir, what, needed):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    require_space(out_dir.parent, needed, what)
    staged = staging_dir(out_dir)
    try:
        with disk_full_as_error(out_dir, what, needed):
            src = _single_strategy(src_strategy, staged / "src-strategy")
            dst = _single_strategy(dst_strategy, staged / "dst-strategy") if dst_strategy is not None else None
            record = {"files": sources["refs"], "src_strategy": _refs(src_strategy),
                      "dst_strategy": _refs(dst_strategy) if dst_strategy is not None else None}
            for rank in range(world):
                name = ckpt.file_name(history.get("prefix") or "transformed", rank, history.get("epoch") or 0,
                                      history.get("step_in_epoch") or 0)
                path = ckpt.rank_dir(staged, rank) / name
                path.parent.mkdir(parents=True)
                ranks_needed = ms.rank_list_for_transform(rank, src, dst)
                try:
                    ms.transform_checkpoint_by_rank(rank, {k: str(files[k]) for k in ranks_needed}, str(path), src,
                                                    dst)
                except (ValueError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"MindSpore could not transform the checkpoint for rank {rank}: "
                                          f"{exc}") from None
                if not sources["bare"]:  # rank files nothing vouched for give rank files nothing vouches for
                    atomic_write_json(ckpt.manifest_path_of(path), {
                        **history, "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "file": name,
                        "rank": rank, "world_size": world, "size": path.stat().st_size, "sha256": sha256_file(path),
                        "created": time.time(), "transformed_from": record})
                if dst is not None:
                    (staged / "strategy").mkdir(exist_ok=True)
                    shutil.copyfile(dst, staged / "strategy" / f"ckpt_strategy_rank_{rank}.ckpt")
            for helper in ("src-strategy", "dst-strategy"):
                shutil.rmtree(staged / helper, ignore_errors=True)
            fsync_tree(staged)
            if out_dir.exists():
                raise OutputExistsError(f"{out_dir} appeared while it was being written; nothing was overwritten")
            os.rename(staged, out_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return out_dir


def shard_problems(layouts: dict[str, Layout], shards: list[dict], files: list[Path]) -> list[str]:
    """Everything that stops these shards (name -> tensor per rank) being merged with these layouts."""
    if device_count(layouts) != len(shards):
        return [_device_mismatch(layouts, len(shards))]
    problems = []
    for name, lay in layouts.items():
        if not is_model_weight(name):
            continue
        if not lay.plain:
            problems.append(f"{name}: its layout uses optimizer sharding or a nested device axis, which "
                            "merge_sliced_parameter cannot undo; use transform(..., dst_strategy=None)")
            continue
        lacking = [r for r in lay.ranks() if name not in shards[r]]
        if lacking:
            problems.append(f"the strategy names {name} (stage {lay.stage}) but rank file(s) "
                            f"{', '.join(files[r].name for r in lacking)} have no such parameter")
            continue
        shapes = {r: tuple(shards[r][name].shape) for r in lay.ranks()}
        first = lay.ranks()[0]
        if len(shapes[first]) != len(lay.tensor_map):
            problems.append(f"{name}: the strategy maps {len(lay.tensor_map)} dimension(s) but rank {first}'s slice "
                            f"has shape {shapes[first]}")
            continue
        odd = [r for r in lay.ranks() if shapes[r] != shapes[first]]
        if odd and not lay.uneven:
            problems.append(f"{name}: slice shapes differ: rank {first} has {shapes[first]} but rank {odd[0]} has "
                            f"{shapes[odd[0]]}")
    unknown = sorted({n for shard in shards for n in shard if n not in layouts})
    if unknown:
        problems.append(f"{len(unknown)} parameter(s) of the rank files are not in the strategy, e.g. "
                        f"{', '.join(unknown[:4])}: the strategy file is not the one of these shards")
    return problems


# ---------------------------------------------------------------------------------------------- helpers
def _merge_slices(shards: list[dict], layouts: dict[str, Layout]) -> dict:
    """name -> whole Parameter, with MindSpore's merge_sliced_parameter, in the ranks' parameter order."""
    import mindspore as ms

    merged = {}
    for shard in shards:
        for name in shard:
            if name in merged:
                continue
            lay = layouts[name]
            try:
                merged[name] = ms.merge_sliced_parameter([shards[k][name] for k in lay.ranks()], {name: lay.proto})
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{name}: MindSpore could not merge its slices ({exc})") from None
    return merged


def _existing(rank_files) -> list[Path]:
    files = [Path(f) for f in rank_files]
    if not files:
        raise CheckpointError("no rank files given")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"rank file(s) {', '.join(missing)} do not exist")
    return files


def _rank_sources(files: list[Path]) -> dict:
    """Verify each rank file against its manifest (in parallel); lineage of the first and refs of all."""
    def identify(path: Path):
        if not ckpt.manifest_path_of(path).is_file():
            return None, sha256_file(path), []
        problems = ckpt.verify(path)
        m = ckpt.read_manifest(path) if not problems or "manifest" not in problems[0] else None
        return m, (m or {}).get("sha256"), problems

    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1)) as pool:
        found = list(pool.map(identify, files))
    problems = [p for _, _, ps in found for p in ps]
    manifests = [(r, m) for r, (m, _, _) in enumerate(found) if m is not None]
    for r, m in manifests:
        if m.get("rank", r) != r:
            problems.append(f"{files[r]}: its manifest says rank {m.get('rank')} but it was given as rank {r}: "
                            "list the rank files in rank order")
        if m.get("world_size") not in (None, len(files)):
            problems.append(f"{files[r]}: its manifest says world_size {m.get('world_size')} but {len(files)} rank "
                            "files were given")
    steps = {m.get("global_step") for _, m in manifests}
    if len(steps) > 1:
        problems.append("ranks from different steps: " + ", ".join(
            f"{files[r].name} is step {m.get('global_step')}" for r, m in manifests))
    _raise(problems, "the rank files are not one sound checkpoint set")
    history = lineage(manifests[0][1]) if manifests else {
        "prefix": "merged", "stage": None, "kind": "full", "global_step": None, "epoch": None, "step_in_epoch": None,
        "loss": None, "model_config": None, "pet_method": "", "training_args": None, "dataset_id": None,
        "dataset": None, "tokenizer": None, "parent": None}
    refs = [{"rank": r, "path": str(f.resolve()), "sha256": sha}
            for r, (f, (_, sha, _)) in enumerate(zip(files, found))]
    bare = [f for f, (m, _, _) in zip(files, found) if m is None]
    return {"lineage": history, "refs": refs, "bare": bare}


def _model_config(given, history: dict):
    from ..model import GPT2Config

    if given is not None:
        return given
    return GPT2Config.from_dict(history["model_config"]) if history.get("model_config") else None


def _single_strategy(strategy, folder: Path) -> str:
    """One strategy file for MindSpore's transform API: the file, or the stages merged by MindSpore."""
    import mindspore as ms

    paths = _as_list(strategy)
    if len({Path(p).read_bytes() for p in paths}) == 1:
        return str(paths[0])
    folder.mkdir(parents=True)
    for i, p in enumerate(paths):
        shutil.copyfile(p, folder / f"stage_file_{i}{Path(p).suffix}")
    merged = folder.parent / f"{folder.name}-merged{Path(paths[0]).suffix}"
    ms.merge_pipeline_strategys(str(folder), str(merged))
    return str(merged)


def _as_list(strategy) -> list[Path]:
    return [Path(strategy)] if isinstance(strategy, (str, Path)) else [Path(s) for s in strategy]


def _refs(strategy) -> list[dict]:
    return [{"path": str(p.resolve()), "sha256": sha256_file(p)} for p in _as_list(strategy)]


def _device_mismatch(layouts: dict[str, Layout], n_files: int) -> str:
    stages = {}
    for lay in layouts.values():
        stages.setdefault(lay.stage, lay.dev_matrix)
    desc = "; ".join(f"stage {s}: dev_matrix {list(d)}" for s, d in sorted(stages.items()))
    return (f"the strategy spans {device_count(layouts)} device(s) ({desc}) but {n_files} rank file(s) were given: "
            "the strategy file does not match these shards")


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise CheckpointError(f"{what}:\n" + "\n".join(f"  - {p}" for p in problems))
