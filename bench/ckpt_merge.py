"""Benchmark: checkpoint merges against a plain copy of the same bytes, and sha256 verification.

Run: .venv/bin/python bench/ckpt_merge.py [--mb 500 --repeat 3 --dir /some/disk]

Builds checkpoint sets of about --mb MB in a temporary folder (removed at the end) and, in one process:
- replicas:      2 data-parallel ranks of random float32 weights, identical (what DP training writes);
- replicas+adam: the same with Adam moments beside the weights (the Trainer's layout: merge keeps 1/3);
- sliced:        2 model-parallel ranks cut from one set of weights, with a strategy file (merge_sliced).
Each merge is timed against shutil.copyfile of the same rank files (+ fsync), best of --repeat, both
from the page cache.  Throughput = bytes of the set / seconds.  Prints
`merge throughput X MB/s vs copy Y MB/s = ratio (goal >= 0.5)` per case and the sha256 verify rate.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402

from mftasks import checkpoint as ckpt  # noqa: E402
from mftasks.ckpt import merge_replicas, merge_sliced, write_strategy  # noqa: E402
from mftasks.files import atomic_write_json, fsync_path, sha256_file  # noqa: E402

SIDE = 1024  # each parameter is SIDE x SIDE float32 (4 MiB)


def manifest(path: Path, rank: int, world: int) -> None:
    atomic_write_json(ckpt.manifest_path_of(path), {
        "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "file": path.name, "rank": rank, "epoch": 1,
        "step_in_epoch": 1, "size": path.stat().st_size, "sha256": sha256_file(path), "created": time.time(),
        "prefix": "bench", "stage": "train", "kind": "full", "global_step": 1, "world_size": world, "loss": None,
        "model_config": None, "pet_method": "", "training_args": None, "dataset_id": None, "dataset": None,
        "tokenizer": None, "parent": None})


def save(path: Path, tensors: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in tensors.items()], str(path))
    return path


def replica_set(root: Path, per_rank_mb: int, adam: bool) -> list[Path]:
    """2 identical ranks; with adam, a third of each rank is weights and the rest Adam moments."""
    rng = np.random.default_rng(0)
    n = max(1, per_rank_mb * (1 << 20) // (SIDE * SIDE * 4) // (3 if adam else 1))
    weights = {f"transformer.h.{i}.mlp.c_fc.weight": rng.standard_normal((SIDE, SIDE), dtype=np.float32)
               for i in range(n)}
    tensors = dict(weights)
    if adam:
        for prefix in ("adam_m", "adam_v"):
            tensors.update({f"{prefix}.{k}": v for k, v in weights.items()})
    f0 = save(ckpt.rank_dir(root, 0) / "bench_rank_0-1_1.ckpt", tensors)
    f1 = ckpt.rank_dir(root, 1) / "bench_rank_1-1_1.ckpt"
    f1.parent.mkdir(parents=True)
    shutil.copyfile(f0, f1)
    for r, f in enumerate((f0, f1)):
        manifest(f, r, 2)
    return [f0, f1]


def sliced_set(root: Path, per_rank_mb: int) -> tuple[list[Path], Path]:
    """2 model-parallel ranks: every weight cut on dim 0, one strategy file."""
    rng = np.random.default_rng(1)
    n = max(1, per_rank_mb * 2 * (1 << 20) // (SIDE * SIDE * 4))
    weights = {f"transformer.h.{i}.attn.c_attn.weight": rng.standard_normal((SIDE, SIDE), dtype=np.float32)
               for i in range(n)}
    files = []
    for r in range(2):
        files.append(save(ckpt.rank_dir(root, r) / f"bench_rank_{r}-1_1.ckpt",
                          {k: v[r * SIDE // 2:(r + 1) * SIDE // 2] for k, v in weights.items()}))
        manifest(files[-1], r, 2)
    strategy = write_strategy(root / "strategy" / "ckpt_strategy_rank_0.ckpt",
                              {k: ([2], [0, -1]) for k in weights})
    return files, strategy


def copy_seconds(files: list[Path], dst: Path) -> float:
    dst.mkdir(exist_ok=True)
    t = time.perf_counter()
    for f in files:
        shutil.copyfile(f, dst / f.name)
        fsync_path(dst / f.name)
    fsync_path(dst)
    seconds = time.perf_counter() - t
    shutil.rmtree(dst)
    return seconds


def merge_seconds(merge, out: Path) -> float:
    t = time.perf_counter()
    merge(out)
    seconds = time.perf_counter() - t
    out.unlink()
    ckpt.manifest_path_of(out).unlink()
    return seconds


def compare(name: str, files: list[Path], merge, work: Path, repeat: int) -> None:
    total = sum(f.stat().st_size for f in files)
    merges, copies = [], []
    for _ in range(repeat):  # interleaved, so both see the same cache and disk state
        copies.append(copy_seconds(files, work / "copy"))
        merges.append(merge_seconds(merge, work / "merged.ckpt"))
    m, c = total / min(merges) / 1e6, total / min(copies) / 1e6
    print(f"{name:14s} {total / 1e6:6.0f} MB in {min(merges):.2f}s: merge throughput {m:.0f} MB/s vs copy "
          f"{c:.0f} MB/s = {m / c:.2f} (goal >= 0.5)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500, help="size of each checkpoint set (MB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="where to build the sets (default: a temporary folder)")
    args = ap.parse_args()
    ms.set_device("CPU")
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    try:
        per_rank = args.mb // 2
        runs = work / "replicas"
        files = replica_set(runs, per_rank, adam=False)
        compare("replicas", files, lambda out: merge_replicas(runs, out), work, args.repeat)
        t = time.perf_counter()
        for f in files:
            ckpt.verify(f)
        seconds = time.perf_counter() - t
        size = sum(f.stat().st_size for f in files)
        print(f"verify (sha256) throughput {size / seconds / 1e9:.2f} GB/s (one thread, {size / 1e6:.0f} MB)")
        shutil.rmtree(runs)

        adam = work / "adam"
        files = replica_set(adam, per_rank, adam=True)
        compare("replicas+adam", files, lambda out: merge_replicas(adam, out), work, args.repeat)
        shutil.rmtree(adam)

        files, strategy = sliced_set(work / "sliced", per_rank)
        compare("sliced 2-way", files, lambda out: merge_sliced(files, [strategy], out), work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
