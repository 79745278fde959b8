"""Where a MindFormers job resumes: its own `checkpoint/rank_N/meta.json`, agreed on by every rank.

MindFormers writes, beside each rank's checkpoints, `meta.json` = {"last_epoch", "last_step",
"last_ckpt_file"} after each save.  It resumes with `resume_from_checkpoint=<output>/checkpoint` and
either `resume_training=True` (rank 0 reads every meta.json, then a world Barrier, which MindSpore's CPU
backend lacks) or `resume_training=<rank 0's file name>`, which each rank turns into its own file by
replacing `_rank_0` with its rank (run_mindformer.py: `--load_checkpoint DIR --resume_training NAME`).
mftasks does rank 0's part itself: a job is resumed only when every rank has a meta.json naming a
checkpoint file that is there, all at the same step and under rank 0's name with their own rank; otherwise
it starts over and the reason is given (a retry must not resume ranks from different steps).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

META = "meta.json"


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint folder every rank resumes from, and the step they all saved last."""

    checkpoint_dir: Path
    step: int
    files: tuple[Path, ...]
    """Each rank's checkpoint file, by rank."""

    @property
    def file_name(self) -> str:
        """Rank 0's file name: what `--resume_training` takes (each rank puts its own rank into it)."""
        return self.files[0].name


def resume_point(output_dir: str | Path, world: int) -> tuple[ResumePoint | None, str]:
    """(the point to resume the job from, or None; why not, when None)."""
    folder = Path(output_dir) / "checkpoint"
    steps, files = {}, []
    for rank in range(world):
        meta_path = folder / f"rank_{rank}" / META
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            step, name = int(meta["last_step"]), str(meta["last_ckpt_file"])
        except FileNotFoundError:
            return None, f"rank {rank} has saved no checkpoint yet (no {meta_path})"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"{meta_path} is unreadable ({exc})"
        path = meta_path.parent / name
        if Path(name).name != name or not path.is_file():
            return None, f"{meta_path} names {name!r}, which is not in {meta_path.parent}"
        steps[rank] = step
        files.append(path)
    if len(set(steps.values())) != 1:
        return None, "ranks saved different steps last (" + ", ".join(f"rank {r}: {s}" for r, s in steps.items()) + ")"
    for rank, path in enumerate(files):
        if path.name != files[0].name.replace("_rank_0", f"_rank_{rank}"):
            return None, (f"rank {rank}'s last checkpoint {path.name} is not rank 0's {files[0].name} with its rank: "
                          "MindFormers would load another file")
    return ResumePoint(folder, steps[0], tuple(files)), ""
