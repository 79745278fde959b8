"""MindSpore parallel strategy files: how each parameter is sliced over the devices of a pipeline stage.

A strategy file is MindSpore's `ParallelStrategyMap` protobuf (mindspore/train/node_strategy.proto;
`.json` also exists).  Per parameter it holds a device matrix (e.g. [dp, mp]) and a tensor map: for
each tensor dimension the device-matrix axis that splits it, counted from the right (-1: not split).
Rank r of a stage is the row-major index into the device matrix.  With pipeline parallelism each stage
writes its own file (its stage number in the strategy items); MindSpore's merged form prefixes names
with "<stage>-".

Training on Ascend writes these files (`strategy_ckpt_save_file`; MindFormers:
OUTPUT/strategy/ckpt_strategy_rank_N.ckpt).  `write_strategy` builds one for a known split, with the
same protobuf, for tests, benchmarks and hand-made layouts.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

_STAGE_PREFIX = re.compile(r"^(\d+)-(.+)$")


@dataclass(frozen=True)
class Layout:
    """How one parameter is laid out over the devices of its pipeline stage."""

    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    stage: int = 0
    opt_shard_size: int = 0
    """>0: optimizer (weight) sharding on top of the tensor map."""
    nested: bool = False
    """True when one tensor dimension is split over several device axes (MindSpore's Layout API)."""
    uneven: bool = False
    """True when param_split_shape gives uneven slices."""
    proto: object = None
    """MindSpore's ParallelLayouts message (what merge_sliced_parameter takes)."""

    @property
    def devices(self) -> int:
        """Devices of the stage (the product of the device matrix)."""
        return math.prod(self.dev_matrix)

    @property
    def splits(self) -> tuple[int, ...]:
        """Into how many slices each tensor dimension is cut."""
        return tuple(1 if m < 0 else self.dev_matrix[len(self.dev_matrix) - 1 - m] for m in self.tensor_map)

    @property
    def sliced(self) -> bool:
        return any(s > 1 for s in self.splits) or self.opt_shard_size > 0 or self.nested

    @property
    def plain(self) -> bool:
        """A layout merge_sliced_parameter can undo (no optimizer sharding, no nested axes)."""
        return self.opt_shard_size == 0 and not self.nested

    def ranks(self) -> list[int]:
        """Global ranks holding slices of this parameter (rank order within its stage)."""
        return [self.stage * self.devices + i for i in range(self.devices)]


def read_strategy(files) -> dict[str, Layout]:
    """name -> Layout from one or more strategy files (per-stage or per-rank duplicates allowed).

    CheckpointError naming the file when one is missing, unreadable, empty, or disagrees with another.
    """
    import mindspore as ms

    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise CheckpointError("no strategy file given: a sliced checkpoint cannot be merged without the strategy "
                              "file its training run wrote (MindFormers: OUTPUT/strategy/ckpt_strategy_rank_N.ckpt)")
    problems, layouts = [], {}
    for path in files:
        if not path.is_file():
            problems.append(f"strategy file {path} does not exist (MindSpore writes it with "
                            "strategy_ckpt_save_file; MindFormers under OUTPUT/strategy/)")
            continue
        try:
            raw = ms.build_searched_strategy(str(path))
            stage = _stage_of(path)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            problems.append(f"{path}: not a MindSpore strategy file ({str(exc).splitlines()[0]})")
            continue
        if not raw:
            problems.append(f"{path}: the strategy file holds no parameter layouts")
            continue
        for name, proto in raw.items():
            m = _STAGE_PREFIX.match(name)
            this_stage, name = (int(m.group(1)), m.group(2)) if m else (stage, name)
            layout = _layout(proto, this_stage)
            old = layouts.get(name)
            if old is None or layout.stage < old.stage:  # shared by stages: the first stage's copy counts
                layouts[name] = layout
            elif old.stage == layout.stage and _key(old) != _key(layout):
                problems.append(f"{name}: {path} lays it out as {_describe(layout)} but another strategy file "
                                f"as {_describe(old)}")
    if problems:
        raise CheckpointError("cannot read the parallel strategy:\n" + "\n".join(f"  - {p}" for p in problems))
    return layouts


def device_count(layouts: dict[str, Layout]) -> int:
    """Ranks the layouts span: the sum over pipeline stages of each stage's devices."""
    per_stage = {}
    for lay in layouts.values():
        per_stage[lay.stage] = max(per_stage.get(lay.stage, 0), lay.devices)
    return sum(per_stage.values())


def write_strategy(path: str | Path, layouts: dict[str, tuple], stage: int = 0) -> Path:
    """Write a strategy file: name -> (dev_matrix, tensor_map), one pipeline stage, MindSpore's protobuf.

    Written atomically (temporary name, fsync, rename); a full disk ends in a DiskFullError naming the path."""
    from mindspore.train import node_strategy_pb2 as pb

    from ..files import atomic_write_bytes, disk_full_as_error, remove_stale_temporaries

    strategy = pb.ParallelStrategyMap()
    strategy.current_stage = stage
    item = strategy.parallel_strategy_item.add()
    item.node_name = "mftasks-written"
    item.parallel_strategys.stage = stage
    for name, (dev_matrix, tensor_map) in layouts.items():
        entry = strategy.parallel_layout_item.add()
        entry.param_name = name
        lay = entry.parallel_layouts
        lay.dev_matrix.add().dim.extend(int(d) for d in dev_matrix)
        lay.tensor_map.add().dim.extend(int(m) for m in tensor_map)
        lay.param_split_shape.add()
        lay.indices_offset.add()
        lay.field = 0
        lay.opt_weight_shard_step = 0
        lay.opt_weight_shard_size = 0
    path = Path(path)
    data = strategy.SerializeToString()
    with disk_full_as_error(path, f"strategy file {path.name}", len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    atomic_write_bytes(path, data)  # temporary name, fsync, rename; a full disk: DiskFullError, nothing left
    return path


def _layout(proto, stage: int) -> Layout:
    tensor_maps = [list(t.dim) for t in proto.tensor_map]
    return Layout(dev_matrix=tuple(proto.dev_matrix[0].dim), tensor_map=tuple(tensor_maps[0] if tensor_maps else ()),
                  stage=stage, opt_shard_size=int(proto.opt_weight_shard_size), nested=len(tensor_maps) > 1,
                  uneven=bool(proto.param_split_shape and list(proto.param_split_shape[0].dim)), proto=proto)


def _key(layout: Layout) -> tuple:
    return layout.dev_matrix, layout.tensor_map, layout.opt_shard_size


def _stage_of(path: Path) -> int:
    """The pipeline stage a per-stage strategy file belongs to (0 when it does not say)."""
    if path.suffix == ".json":
        items = json.loads(path.read_text(encoding="utf-8")).get("parallel_strategy_item") or {}
        first = next(iter(items.values()), {})
        return int(first.get("stage", 0))
    from mindspore.train import node_strategy_pb2 as pb

    strategy = pb.ParallelStrategyMap()
    strategy.ParseFromString(path.read_bytes())
    items = strategy.parallel_strategy_item
    return int(items[0].parallel_strategys.stage) if items else 0


def _describe(layout: Layout) -> str:
    return f"dev_matrix {list(layout.dev_matrix)} tensor_map {list(layout.tensor_map)} (stage {layout.stage})"
