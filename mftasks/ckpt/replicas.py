"""Data-parallel replicas: every rank holds the whole model; publish it once, after checking they agree.

    merge_replicas("output", "published/gpt2.ckpt")   # the newest step every rank has (never inside "output")

The result holds the model weights only (no optimizer state) and a manifest in mftasks.checkpoint's
format: kind and lineage copied from rank 0's manifest, plus `merged_from` (each rank file and sha256).
"""
from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from ..errors import CheckpointError
from ..files import sha256_file
from .derived import estimate, lineage, prepare_output, publish
from .formats import (as_numpy, format_of, is_model_weight, load_model_weights, load_weights, save_weights,
                      shape_problems)
from .sets import CheckpointSet, set_of

log = logging.getLogger("mftasks.ckpt")


def merge_replicas(output_dir: str | Path, out_path: str | Path, global_step: int | None = None,
                   prefix: str | None = None) -> Path:
    """One complete checkpoint (model weights only) from the identical ranks of one step; returns out_path.

    CheckpointError lists every problem: a missing rank, ranks from different steps, a truncated or
    changed file, ranks whose weights differ (naming the parameters), or sliced ranks (see merge_sliced).
    OutputExistsError if out_path exists; ConfigError if it lies inside output_dir (or contains it).  A
    failure (a full disk included: DiskFullError) leaves nothing at out_path.
    """
    out_path = Path(out_path)
    prepare_output(out_path, [output_dir], where="mftasks ckpt merge")
    cset = set_of(output_dir, global_step, prefix, hashes=False)
    _refuse_sliced(cset)
    files = cset.files
    # Hash the other ranks while this thread parses rank 0 (hashlib and file reads release the GIL); rank 0
    # itself is hashed while the kernel copies it, or beside the save.
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1)) as pool:
        others = [pool.submit(ckpt.verify, f) for f in files[1:]]
        model, skipped = load_model_weights(files[0])
        copy_whole = not skipped and format_of(files[0]) == format_of(out_path)  # the file is the weights
        rank0 = None if copy_whole else pool.submit(ckpt.verify, files[0])
        problems = [p for c in others for p in c.result()]
        if problems:
            raise CheckpointError(f"{output_dir}: cannot merge step {cset.global_step}:\n"
                                  + "\n".join(f"  - {p}" for p in problems))
        _check_model(model, cset, files[0])
        _check_replicas(cset, model)

        def write(tmp: Path) -> str | None:
            if copy_whole:
                return _copy_verified(files[0], tmp, cset.ranks[0].sha256)
            save_weights(model, tmp)
            if rank0.result():
                raise CheckpointError(f"{output_dir}: cannot merge step {cset.global_step}: {rank0.result()[0]}")
            return None

        needed = files[0].stat().st_size if copy_whole else estimate(model)
        info = publish(out_path, write, _manifest(cset), needed=needed)
    log.info("merged %d rank(s) of %s step %d into %s (%d parameters, %.1f MB)", len(files), cset.prefix,
             cset.global_step, out_path, len(model), info.manifest["size"] / 1e6)
    return info.path


def _manifest(cset: CheckpointSet) -> dict:
    ranks = sorted(cset.ranks.items())
    return {**lineage(cset.manifest),
            "merged_from": [{"rank": r, "path": str(i.path.resolve()), "sha256": i.sha256} for r, i in ranks]}


def differing_parameters(a: dict, b: dict) -> list[str]:
    """Names whose presence, shape, dtype or bytes differ between two name -> tensor dicts."""
    out = sorted(set(a) ^ set(b))
    for name in a.keys() & b.keys():
        x, y = as_numpy(a[name]), as_numpy(b[name])
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(_bytes(x), _bytes(y)):
            out.append(name)
    return sorted(out)


def _check_replicas(cset: CheckpointSet, model: dict) -> None:
    """Ranks whose file differs from rank 0's must still hold the same weights (e.g. other counters)."""
    sha0 = cset.ranks[0].sha256
    differing = {}
    for r, info in sorted(cset.ranks.items()):
        if r == 0 or info.sha256 == sha0:  # identical bytes, identical weights
            continue
        diff = differing_parameters(model, load_weights(info.path, model_only=True))
        if diff:
            differing[r] = diff
    if differing:
        lines = [f"rank {r} differs from rank 0 in {len(d)} parameter(s): {', '.join(d[:8])}"
                 + (", ..." if len(d) > 8 else "") for r, d in differing.items()]
        raise CheckpointError(f"{cset.output_dir}: the ranks of step {cset.global_step} are not replicas (data "
                              "parallel ranks end bitwise identical; sliced ranks need merge_sliced):\n"
                              + "\n".join(f"  - {x}" for x in lines))


def _check_model(model: dict, cset: CheckpointSet, path: Path) -> None:
    if not model:
        raise CheckpointError(f"{path} holds no model weights (only optimizer state or counters)")
    cfg = cset.manifest.get("model_config")
    if cset.kind == "full" and cfg:
        from ..model import GPT2Config

        problems = shape_problems(model, GPT2Config.from_dict(cfg), str(path))
        if problems:
            raise CheckpointError(f"{path} does not hold the model its manifest describes:\n"
                                  + "\n".join(f"  - {p}" for p in problems))


def _refuse_sliced(cset: CheckpointSet) -> None:
    if not cset.strategy_files:
        return
    from .strategy import read_strategy

    sliced = sorted(n for n, lay in read_strategy(cset.strategy_files).items() if lay.sliced and is_model_weight(n))
    if sliced:
        raise CheckpointError(
            f"{cset.output_dir}: the ranks of step {cset.global_step} are slices, not replicas: the strategy files "
            f"under {cset.output_dir / 'strategy'} split {len(sliced)} parameter(s) (e.g. {sliced[0]}); merge them "
            "with merge_sliced (`mftasks ckpt merge-sliced`, or `mftasks ckpt merge` which picks it)")


def _copy_verified(src: Path, dst: Path, expected_sha: str) -> str:
    """Copy src to dst in the kernel while another thread hashes src; CheckpointError unless the hash is the
    one src's manifest vouches for (the copy is then those bytes: src is read-only and its size is checked)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(sha256_file, src)
        shutil.copyfile(src, dst)
        sha = digest.result()
    if sha != expected_sha:
        raise CheckpointError(f"{src}: sha256 does not match its manifest (corrupted or changed)")
    if dst.stat().st_size != src.stat().st_size:
        raise CheckpointError(f"{src} changed size while it was being copied to {dst}")
    return sha


def _bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8)
