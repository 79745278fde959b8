"""Write packed samples as MindRecord shards (mindspore.mindrecord.FileWriter)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import fsync_path, sha256_file

SCHEMA = {
    "input_ids": {"type": "int32", "shape": [-1]},
    # As MindFormers' GPT-2 data: 1 for real tokens, 0 for padding (packed samples have none).
    "attention_mask": {"type": "int32", "shape": [-1]},
}
_PAGE_SIZE = 1 << 20
_ROWS_PER_WRITE = 1024


def write_split(samples: np.ndarray, folder: Path, name: str, num_shards: int) -> list[dict]:
    """Write samples to folder/<name>-<i>-of-<n>.mindrecord (+ .db), contiguous equal parts, in order.

    One FileWriter per file: MindSpore's multi-shard writer decides at run time which shard gets an
    odd row, so its bytes are not reproducible; this is (tested: any --workers gives identical files).
    Returns manifest entries for every file written.
    """
    from mindspore.mindrecord import FileWriter

    folder.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, min(num_shards, len(samples)))
    mask = np.ones(samples.shape[1], dtype=np.int32)
    for i, part in enumerate(np.array_split(samples, num_shards)):
        path = folder / (f"{name}.mindrecord" if num_shards == 1 else f"{name}-{i:05d}-of-{num_shards:05d}.mindrecord")
        writer = FileWriter(str(path), shard_num=1, overwrite=False)
        writer.set_page_size(_PAGE_SIZE)
        writer.set_header_size(_header_size(part.nbytes * 2))
        writer.add_schema(SCHEMA, "mftasks packed causal-LM samples")
        for start in range(0, len(part), _ROWS_PER_WRITE):
            writer.write_raw_data([{"input_ids": row, "attention_mask": mask}
                                   for row in part[start:start + _ROWS_PER_WRITE]])
        writer.commit()
    entries = []
    for path in sorted(folder.iterdir()):
        fsync_path(path)
        entries.append({"file": f"{folder.name}/{path.name}", "size": path.stat().st_size,
                        "sha256": sha256_file(path)})
    fsync_path(folder)
    return entries


def estimated_bytes(samples: np.ndarray) -> int:
    """About what write_split puts on disk for these samples (ids + mask, index, header)."""
    return 2 * int(samples.nbytes) + 64 * len(samples) + _header_size(samples.nbytes * 2) + (1 << 16)


def _header_size(bytes_per_shard: int) -> int:
    """Header room for the page index (~300 bytes a page), a power of two in MindRecord's range."""
    pages = bytes_per_shard // _PAGE_SIZE + 2
    size = 1 << 16
    while size < pages * 400 and size < (1 << 27):
        size <<= 1
    return size
