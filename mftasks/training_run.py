"""A training run's fixed facts (`Run`), settled by `plan`: every check a train/finetune call makes before
it writes anything, so that a run refused is refused before step 1 with nothing changed on disk; and what
the run did (`TrainResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint as ckpt
from . import data as datasets
from . import output_dir as out_dir
from . import weights
from .distributed import rank_and_world
from .errors import ConfigError, DataError
from .files import sha256_file

if TYPE_CHECKING:
    from .model import GPT2Config


@dataclass
class TrainResult:
    """What a train/finetune call did (MindFormers returns None; callers may ignore this)."""

    stage: str
    steps: int
    first_step: int
    final_loss: float
    checkpoint: Path
    seconds: float
    tokens_per_second: float


@dataclass(frozen=True)
class Run:
    """What a training run is: fixed before it writes, read by its loop and by every checkpoint it saves."""

    stage: str
    """'train', 'finetune' or 'lora': names its checkpoints (checkpoint.PREFIX)."""
    rank: int
    world: int
    config: GPT2Config
    """The model's shape (vocabulary from the dataset's tokenizer)."""
    dataset: str
    manifest: dict
    """The dataset's manifest."""
    per_epoch: int
    """Optimizer steps per epoch (each of gradient_accumulation_steps batches per rank)."""
    total: int
    """The step it ends at."""
    start: ckpt.CheckpointInfo | None
    """The weights it starts from (finetune: a full checkpoint; train: train_checkpoint or None)."""
    resume_from: ckpt.CheckpointInfo | None
    """The checkpoint it resumes (weights, optimizer state, global step), or None."""
    replaces: list[ckpt.CheckpointInfo] = field(default_factory=list)
    """The old run's checkpoints that overwrite_output_dir removes once every check passed."""
    leftovers: list[str] = field(default_factory=list)
    """Resuming: files a killed attempt left under names this run will write (problem lines)."""
    warnings: list[str] = field(default_factory=list)
    """What the run does that the user may not expect (a warmup longer than the run), logged at its start."""
    lineage: dict | None = None
    """Dataset, tokenizer (copied into output_dir) and parent, recorded in every checkpoint's manifest;
    set once the run starts writing."""


def plan(args, choice: weights.ModelChoice, stage: str, dataset: str, start: ckpt.CheckpointInfo | None,
         resume: bool) -> Run:
    """The run `stage` of `choice` on `dataset` under TrainingArguments `args`, or the error that refuses it."""
    from .data.loader import batches_per_epoch

    rank, world = rank_and_world()
    manifest = datasets.read_manifest(dataset)
    check_dataset_files(dataset, manifest)
    cfg = choice.config_for(manifest, f"train_dataset {dataset}")
    if start is not None:
        weights.check_same_shape(start, cfg)
    resume_from = ckpt.resume_point(args.output_dir, stage, rank, world, resume, args.resume_from_checkpoint)
    # Refused before anything is written: weights trained on other token ids than this dataset's.
    for info, what in ((start, "the checkpoint it starts from"), (resume_from, "the checkpoint it resumes")):
        if info is not None:
            weights.check_tokenizer_fits(info, manifest, dataset, stage, what)
    out_dir.check_start_not_deletable(args.output_dir, stage, rank, start)
    old_run = out_dir.old_checkpoints(args.output_dir, stage, rank, resume_from, args.overwrite_output_dir)
    k = args.gradient_accumulation_steps
    per_epoch = batches_per_epoch(manifest["splits"]["train"]["samples"], args.batch_size, world) // k
    if per_epoch < 1:
        raise ConfigError(f"the train split of {dataset} has {manifest['splits']['train']['samples']} samples: "
                          f"too few for one step of batch_size {args.batch_size} x {world} rank(s) x "
                          f"{k} accumulation step(s); lower batch_size or add data", where="Trainer")
    total = args.max_steps if args.max_steps > 0 else per_epoch * args.num_train_epochs
    warnings = [w for w in [args.warmup_warning(total)] if w]
    if args.save_strategy == "no":
        warnings.append("save_strategy='no': this run saves no checkpoint, so evaluate, predict, finetune and "
                        "resume have none to start from; use 'steps' or 'epoch' to keep its weights")
    first = resume_from.global_step if resume_from is not None else 0
    planned = [ckpt.file_name(ckpt.PREFIX[stage], rank, *(x + 1 for x in divmod(step - 1, per_epoch)))
               for step in range(first + 1, total + 1) if args.saves_at(step, total, per_epoch)]
    foreign = out_dir.foreign_files(ckpt.rank_dir(args.output_dir, rank), planned)
    if resume_from is None:
        ConfigError.raise_if(foreign, where="Trainer")
    return Run(stage, rank, world, cfg, dataset, manifest, per_epoch, total, start, resume_from, old_run, foreign,
               warnings)


def check_dataset_files(folder, manifest: dict) -> None:
    """DataError when the dataset's files (its tokenizer included) are missing or changed, before training."""
    problems = datasets.verify(folder, manifest, hashes=False)
    tok = Path(folder) / manifest["tokenizer"]["file"]
    if not problems and sha256_file(tok) != manifest["tokenizer"]["sha256"]:
        problems.append(f"{tok}: sha256 does not match the manifest (corrupted or changed)")
    if problems:
        raise DataError(f"train_dataset {folder} is incomplete or changed since `mftasks data prepare` wrote it:\n"
                        + "\n".join(f"  - {p}" for p in problems)
                        + "\nprepare the dataset again (or restore the missing files)")
