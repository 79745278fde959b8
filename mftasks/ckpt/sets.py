"""Checkpoint sets: the per-rank checkpoints of one step of one run, plus its strategy files.

    OUTPUT/checkpoint/rank_N/<prefix>_rank_N-<epoch>_<step>.ckpt (+ .manifest.json)   N = 0 .. world_size-1
    OUTPUT/strategy/ckpt_strategy_rank_N.ckpt                                          (sliced runs only)

A set is named by (prefix, global_step): a train run and a LoRA finetune in the same output dir both
have a step 2.  The world size comes from the manifests.  `set_of` names one set and raises a
CheckpointError listing every problem (missing rank, ranks from different steps, truncated file, hash
mismatch); `newest_verified_set` falls back to older sets, for resume and retry logic.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import checkpoint as ckpt
from ..errors import CheckpointError, ConfigError

STRATEGY_DIR = "strategy"


@dataclass(frozen=True)
class CheckpointSet:
    """The checkpoints of one step, by rank (possibly incomplete: see `missing` and `problems`)."""

    output_dir: Path
    prefix: str
    global_step: int
    world_size: int
    ranks: dict[int, ckpt.CheckpointInfo]
    """rank -> its checkpoint of this step (only the ranks that have one)."""
    strategy_files: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def manifest(self) -> dict:
        """The lowest rank's manifest (rank 0's in a complete set)."""
        return self.ranks[min(self.ranks)].manifest

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "")

    @property
    def files(self) -> list[Path]:
        return [self.ranks[r].path for r in sorted(self.ranks)]

    @property
    def size(self) -> int:
        return sum(i.manifest["size"] for i in self.ranks.values())

    @property
    def missing(self) -> list[int]:
        return [r for r in range(self.world_size) if r not in self.ranks]

    @property
    def created(self) -> float:
        return max(i.manifest["created"] for i in self.ranks.values())

    def problems(self, hashes: bool = True) -> list[str]:
        """Everything wrong with this set (empty: complete and every file matches its manifest)."""
        out = []
        sizes = {i.manifest.get("world_size") for i in self.ranks.values()}
        if len(sizes) > 1:
            out.append(f"step {self.global_step}: the manifests disagree on the world size ({sorted(map(str, sizes))})")
        for r in self.missing:
            out.append(self._missing_rank(r))
        for r, info in sorted(self.ranks.items()):
            if info.manifest.get("rank", r) != r:
                out.append(f"{info.path}: its manifest says rank {info.manifest.get('rank')} but it is in rank_{r}/")
        out.extend(verify_files([self.ranks[r].path for r in sorted(self.ranks)], hashes))
        return out

    def _missing_rank(self, rank: int) -> str:
        folder = ckpt.rank_dir(self.output_dir, rank)
        steps = sorted({i.global_step for i in ckpt.listing(folder) if i.manifest.get("prefix") == self.prefix})
        if not steps:
            return (f"rank {rank} of {self.world_size} is missing: {folder} has no {self.prefix} checkpoint "
                    f"(the run's manifests say world_size {self.world_size})")
        return (f"rank {rank} has no checkpoint of step {self.global_step} (it has step(s) "
                f"{', '.join(map(str, steps))}): ranks from different steps")


def verify_files(paths: list[Path], hashes: bool = True) -> list[str]:
    """Problems of each file against its manifest, hashing the files in parallel threads."""
    if not hashes or len(paths) < 2:
        return [p for path in paths for p in ckpt.verify(path, hashes=hashes)]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return [p for problems in pool.map(ckpt.verify, paths) for p in problems]


def rank_folders(output_dir: str | Path) -> dict[int, Path]:
    """rank -> OUTPUT/checkpoint/rank_N, for every such folder."""
    root = Path(output_dir) / "checkpoint"
    if not root.is_dir():
        return {}
    out = {}
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("rank_") and p.name[5:].isdigit():
            out[int(p.name[5:])] = p
    return out


def strategy_files(output_dir: str | Path) -> tuple[Path, ...]:
    """OUTPUT/strategy/*.ckpt (or *.json), as MindFormers writes them for sliced runs."""
    folder = Path(output_dir) / STRATEGY_DIR
    if not folder.is_dir():
        return ()
    return tuple(sorted(p for p in folder.iterdir() if p.suffix in (".ckpt", ".json") and p.is_file()))


def sets_in(output_dir: str | Path) -> list[CheckpointSet]:
    """Every (prefix, step) any rank has a manifest for, oldest first (complete or not, unverified)."""
    output_dir = Path(output_dir)
    by_key: dict[tuple[str, int], dict[int, ckpt.CheckpointInfo]] = {}
    for rank, folder in rank_folders(output_dir).items():
        for info in ckpt.listing(folder):
            by_key.setdefault((info.manifest.get("prefix", ""), info.global_step), {})[rank] = info
    strategy = strategy_files(output_dir)
    found = []
    for (prefix, step), ranks in by_key.items():
        world = max(int(i.manifest.get("world_size") or 1) for i in ranks.values())
        extra = sorted(r for r in ranks if r >= world)
        warnings = tuple(f"rank {r} has a {prefix} checkpoint of step {step} but the run's world size is {world}: "
                         "ignored" for r in extra)
        ranks = {r: ranks[r] for r in sorted(ranks) if r < world}
        if ranks:
            found.append(CheckpointSet(output_dir, prefix, step, world, ranks, strategy, warnings))
    return sorted(found, key=lambda s: (s.created, s.global_step))


def set_of(output_dir: str | Path, global_step: int | None = None, prefix: str | None = None,
           hashes: bool = True) -> CheckpointSet:
    """The set of `global_step` (default: the newest step every rank has), checked; CheckpointError if not sound.

    `prefix` picks the run when several stages share the output dir (default: the newest one).
    hashes=False checks presence and sizes only.
    """
    output_dir = Path(output_dir)
    candidates = [s for s in sets_in(output_dir) if prefix is None or s.prefix == prefix]
    if not candidates:
        what = f"{prefix} checkpoint" if prefix else "checkpoint with a manifest"
        raise CheckpointError(f"{output_dir}: no {what} under {output_dir / 'checkpoint'}/rank_*/")
    if global_step is None:
        chosen = _newest_complete(candidates, output_dir)
    else:
        at_step = [s for s in candidates if s.global_step == global_step]
        if not at_step:
            steps = sorted({s.global_step for s in candidates})
            raise CheckpointError(f"{output_dir}: no checkpoint of step {global_step} (steps there: "
                                  f"{', '.join(map(str, steps))})")
        if len({s.prefix for s in at_step}) > 1:
            raise ConfigError(f"{output_dir} has step {global_step} of several runs "
                              f"({', '.join(sorted(s.prefix for s in at_step))}); name one with prefix=",
                              where="set_of")
        chosen = at_step[0]
    problems = chosen.problems(hashes=hashes)
    if problems:
        raise CheckpointError(f"{output_dir}: the {chosen.prefix} checkpoint set of step {chosen.global_step} is "
                              "not sound:\n" + "\n".join(f"  - {p}" for p in problems))
    return chosen


def newest_verified_set(output_dir: str | Path, prefix: str | None = None
                        ) -> tuple[CheckpointSet | None, list[str]]:
    """The newest complete set whose files all match their manifests, and a warning per newer set skipped."""
    warnings = []
    for s in reversed(sets_in(output_dir)):
        if prefix is not None and s.prefix != prefix:
            continue
        problems = s.problems(hashes=True)
        if not problems:
            return s, warnings
        warnings.append(f"skipping the {s.prefix} checkpoint set of step {s.global_step}: {problems[0]}"
                        + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
    return None, warnings


def _newest_complete(candidates: list[CheckpointSet], output_dir: Path) -> CheckpointSet:
    newest = candidates[-1]
    same_run = [s for s in candidates if s.prefix == newest.prefix]
    complete = [s for s in same_run if not s.missing]
    if complete:
        chosen = complete[-1]
        skipped = [s.global_step for s in same_run if s.global_step > chosen.global_step]
        if skipped:
            note = (f"newer step(s) {', '.join(map(str, skipped))} skipped: not every rank has them; "
                    f"using step {chosen.global_step}")
            chosen = CheckpointSet(chosen.output_dir, chosen.prefix, chosen.global_step, chosen.world_size,
                                   chosen.ranks, chosen.strategy_files, chosen.warnings + (note,))
        return chosen
    have = {}
    for s in same_run:
        for r in s.ranks:
            have.setdefault(r, []).append(s.global_step)
    world = newest.world_size
    parts = [f"rank {r} has step(s) {', '.join(map(str, sorted(have[r])))}" if r in have
             else f"rank {r} has none (missing)" for r in range(world)]
    if len(have) == 1 and world > 1:
        raise CheckpointError(f"{output_dir}: the {newest.prefix} run has world_size {world} but only rank(s) "
                              f"{sorted(have)} wrote checkpoints: " + "; ".join(parts))
    raise CheckpointError(f"{output_dir}: no step that every rank of the {newest.prefix} run has (ranks from "
                          "different steps): " + "; ".join(parts))
