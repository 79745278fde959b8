"""Read a prepared dataset as a `mindspore.dataset` pipeline, sharded by rank, resumable by batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from . import manifest as mf

COLUMNS = ("input_ids", "attention_mask")


def sample_order(n_samples: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int,
                 epoch: int = 0, drop_remainder: bool = True) -> np.ndarray:
    """Sample indices this rank reads in this epoch, in order.

    Every rank gets the same number of samples (the global order cut into world_size interleaved
    parts, truncated to equal length) so data-parallel ranks run the same number of steps.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_samples) if shuffle else np.arange(n_samples)
    per_rank = n_samples // world_size
    mine = order[rank::world_size][:per_rank]
    if drop_remainder:
        mine = mine[: (len(mine) // batch_size) * batch_size]
    return mine


def batches_per_epoch(n_samples: int, batch_size: int, world_size: int = 1, drop_remainder: bool = True) -> int:
    per_rank = n_samples // world_size
    return per_rank // batch_size if drop_remainder else -(-per_rank // batch_size)


def load(folder: str | Path, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
         world_size: int = 1, skip_batches: int = 0, split: str = "train", epoch: int = 0,
         columns: tuple[str, ...] = COLUMNS, drop_remainder: bool = True, verify: bool = True):
    """A batched `mindspore.dataset.MindDataset` over one split of a prepared dataset.

    rank/world_size shard the samples for data parallelism; skip_batches drops the batches a resumed
    run already consumed in this epoch; epoch reseeds the shuffle.  With verify (the default) every
    file is checked against the manifest first.
    """
    import mindspore.dataset as ds

    manifest = mf.read(folder)
    _check_args(folder, manifest, batch_size, rank, world_size, skip_batches, split, columns)
    if verify:
        bad = mf.verify(folder, manifest)
        if bad:
            raise DataError(f"dataset {folder} does not match its manifest:\n"
                            + "\n".join(f"  - {b}" for b in bad) + "\nprepare it again")
    n = manifest["splits"][split]["samples"]
    order = sample_order(n, batch_size, shuffle, seed, rank, world_size, epoch, drop_remainder)
    total = batches_per_epoch(n, batch_size, world_size, drop_remainder)
    if skip_batches > total:
        raise DataError(f"skip_batches={skip_batches} but the {split} split has only {total} batches per epoch "
                        f"for batch_size={batch_size} and world_size={world_size}")
    order = order[skip_batches * batch_size:]
    if len(order) == 0:
        raise DataError(f"nothing left to read in the {split} split of {folder}: {total} batches per epoch, "
                        f"{skip_batches} skipped")
    files = mf.data_files(folder, manifest, split)
    data = ds.MindDataset(files, columns_list=list(columns), sampler=ds.SubsetSampler(order.tolist()))
    return data.batch(batch_size, drop_remainder=drop_remainder)


def _check_args(folder, manifest, batch_size, rank, world_size, skip_batches, split, columns) -> None:
    problems = []
    if split not in mf.SPLITS:
        problems.append(f"split={split!r} is not one of {', '.join(mf.SPLITS)}")
    elif not manifest["splits"][split]["shards"]:
        problems.append(f"the dataset has no {split} split (prepared with --eval-fraction 0?)")
    if not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size={batch_size!r} must be a positive integer")
    if not isinstance(world_size, int) or world_size < 1:
        problems.append(f"world_size={world_size!r} must be a positive integer")
    elif not isinstance(rank, int) or not 0 <= rank < world_size:
        problems.append(f"rank={rank!r} must be in [0, {world_size})")
    if not isinstance(skip_batches, int) or skip_batches < 0:
        problems.append(f"skip_batches={skip_batches!r} must be >= 0")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        problems.append(f"columns {unknown} unknown; the dataset has {', '.join(COLUMNS)}")
    if problems:
        raise DataError(f"cannot load {folder}:\n" + "\n".join(f"  - {p}" for p in problems))
