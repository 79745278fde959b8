"""The dataset loader: rank sharding, resumable skipping, deterministic shuffling."""
from __future__ import annotations

import numpy as np
import pytest

from mftasks.data import load, read_manifest
from mftasks.data.loader import sample_order
from mftasks.errors import DataError


def _batches(ds):
    return [b["input_ids"] for b in ds.create_dict_iterator(output_numpy=True)]


def test_unshuffled_load_reads_rows_in_written_order(tiny_dataset):
    first = _batches(load(tiny_dataset, batch_size=4, shuffle=False))
    again = _batches(load(tiny_dataset, batch_size=4, shuffle=False, skip_batches=1))
    assert first[0].shape == (4, 65) and first[0].dtype == np.int32
    assert np.array_equal(np.concatenate(first[1:]), np.concatenate(again))


def test_ranks_get_disjoint_equal_shards(tiny_dataset):
    n = read_manifest(tiny_dataset)["splits"]["train"]["samples"]
    everything = np.concatenate(_batches(load(tiny_dataset, 1, shuffle=False)))
    orders = [sample_order(n, 2, True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert len(orders[0]) == len(orders[1]) == (n // 2 // 2) * 2
    assert not set(orders[0].tolist()) & set(orders[1].tolist())
    for rank, order in enumerate(orders):
        rows = np.concatenate(_batches(load(tiny_dataset, 2, shuffle=True, seed=5, rank=rank, world_size=2)))
        assert np.array_equal(rows, everything[order])  # the loader reads exactly this rank's samples


def test_skip_batches_resumes_the_same_order(tiny_dataset):
    full = _batches(load(tiny_dataset, 3, shuffle=True, seed=11, epoch=2))
    resumed = _batches(load(tiny_dataset, 3, shuffle=True, seed=11, epoch=2, skip_batches=5))
    assert len(resumed) == len(full) - 5
    assert all(np.array_equal(a, b) for a, b in zip(full[5:], resumed))


def test_shuffle_depends_on_seed_and_epoch_only():
    a = sample_order(100, 4, True, seed=1, rank=0, world_size=1, epoch=0)
    assert np.array_equal(a, sample_order(100, 4, True, seed=1, rank=0, world_size=1, epoch=0))
    assert not np.array_equal(a, sample_order(100, 4, True, seed=1, rank=0, world_size=1, epoch=1))
    assert not np.array_equal(a, sample_order(100, 4, True, seed=2, rank=0, world_size=1, epoch=0))
    assert sorted(a.tolist()) == sorted(set(a.tolist())) and len(a) == 100


def test_eval_split_loads(tiny_dataset):
    n = read_manifest(tiny_dataset)["splits"]["eval"]["samples"]
    rows = np.concatenate(_batches(load(tiny_dataset, 1, shuffle=False, split="eval")))
    assert len(rows) == n


def test_bad_loader_arguments_are_reported_together(tiny_dataset):
    with pytest.raises(DataError) as err:
        load(tiny_dataset, batch_size=0, rank=3, world_size=2, skip_batches=-1, split="test")
    msg = str(err.value)
    for needle in ("split='test'", "batch_size=0", "rank=3", "skip_batches=-1"):
        assert needle in msg


def test_skip_beyond_epoch_is_an_error(tiny_dataset):
    with pytest.raises(DataError, match="skip_batches=100000"):
        load(tiny_dataset, 2, skip_batches=100000)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="is not a prepared dataset .*mftasks data prepare"):
        load(tmp_path, 2)


def test_several_shards_read_in_written_order(tmp_path, corpus_dir, tiny_dataset):
    import mindspore.dataset as ds

    from mftasks.data import PrepareSpec, prepare

    out = tmp_path / "sharded"
    prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(out), tokenizer=str(tiny_dataset / "tokenizer.model"),
                        seq_length=32, num_shards=3))
    m = read_manifest(out)
    files = [out / s["file"] for s in m["splits"]["train"]["shards"] if not s["file"].endswith(".db")]
    assert len(files) == 3
    per_file = [np.stack([r["input_ids"] for r in ds.MindDataset([str(f)], columns_list=["input_ids"], shuffle=False)
                          .create_dict_iterator(output_numpy=True)]) for f in files]
    loaded = np.concatenate(_batches(load(out, 1, shuffle=False)))
    assert np.array_equal(loaded, np.concatenate(per_file))
