"""Training hyperparameters with MindFormers' names (`TrainingArguments`), validated up front.

Users coming from MindFormers write `TrainingArguments(num_train_epochs=1, batch_size=2,
learning_rate=0.001, warmup_steps=100, sink_mode=True, sink_size=2)`; that works unchanged here.
Every field is checked in `__post_init__`; all problems are collected and raised as one
`ConfigError` whose messages each name the field, the bad value and the valid range.

`TypedConfig`, the base shared by every config dataclass, lives in `mftasks.typed_config`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mftasks.errors import ConfigError
from mftasks.typed_config import Checks, TypedConfig

__all__ = ["LR_SCHEDULERS", "OPTIMIZERS", "SAVE_STRATEGIES", "TrainingArguments"]

LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
OPTIMIZERS = ("adamw",)
_OPTIM_ALIASES = {"adamw": "adamw", "adamweightdecay": "adamw", "fp32_adamw": "adamw",
                  "fusedadamweightdecay": "adamw"}
SAVE_STRATEGIES = ("steps", "epoch", "no")


@dataclass(frozen=True)
class TrainingArguments(TypedConfig):
    """Hyperparameters of one training run (MindFormers `TrainingArguments` names)."""

    output_dir: str = "./output"
    """Folder for checkpoints and logs."""
    overwrite_output_dir: bool = False
    """Allow writing into an `output_dir` that already holds a run."""
    seed: int = 42
    """Seed for weights initialisation and everything else random."""
    data_seed: int | None = None
    """Seed for data shuffling; None = use `seed`."""
    batch_size: int = 8
    """Samples per step on each device (MindFormers name; `per_device_train_batch_size` in dicts)."""
    num_train_epochs: int = 1
    """Passes over the training set (ignored when `max_steps` > 0)."""
    max_steps: int = -1
    """Total training steps; -1 = train `num_train_epochs` whole epochs (MindFormers' and transformers' meaning;
    the run's log says once how many steps that is)."""
    learning_rate: float = 5e-5
    """Peak learning rate (after warmup)."""
    lr_end: float = 0.0
    """Final learning rate of the decaying schedules (cosine, linear, polynomial)."""
    lr_scheduler_type: str = "cosine"
    """One of LR_SCHEDULERS."""
    warmup_steps: int = 0
    """Linear warmup steps (0 = none)."""
    warmup_ratio: float | None = None
    """Warmup as a fraction of the total steps, in [0, 1); exclusive with `warmup_steps` > 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optim: str = "adamw"
    """Optimizer; "adamw" (MindFormers' "AdamWeightDecay"/"fp32_adamw" are accepted and normalised)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm; 0 or None = no clipping."""
    gradient_accumulation_steps: int = 1
    """Micro-steps accumulated per optimizer step."""
    save_steps: int = 500
    """Steps between checkpoints when `save_strategy` is "steps"."""
    save_strategy: str = "steps"
    """When to save: "steps" (every save_steps and at the end), "epoch" (at each epoch's end and at the end)
    or "no" (nothing; the run warns that evaluate, predict, finetune and resume then have no checkpoint)."""
    save_total_limit: int | None = 5
    """Checkpoints kept per rank (oldest deleted first); None = keep all."""
    sink_mode: bool = True
    """MindSpore data sinking: sink_size steps per host call.  As in MindFormers, the loss is then reported
    once per sink (a log line every logging_steps x sink_size steps: `logging_interval`).  MindSpore sinks
    data to the device only on Ascend/GPU; on CPU every step is its own host call, with the same result."""
    sink_size: int = 2
    """Steps per sink (MindFormers default 2)."""
    resume_from_checkpoint: str | None = None
    """Checkpoint file or folder to resume from."""
    resume_training: bool = False
    """Restore optimizer state and step counter too, not just the weights."""
    do_eval: bool = False
    """Evaluate during training."""
    eval_step_interval: int = -1
    """Steps between evaluations; -1 = none (alias `eval_steps` in dicts)."""
    eval_epoch_interval: int = 1
    """Epochs between evaluations; -1 = none (alias `eval_epochs` in dicts)."""
    logging_steps: int = 1
    """Steps between loss log lines."""
    dataloader_drop_last: bool = True
    """Drop the last incomplete batch (MindFormers' default).  False is refused: a short last batch would
    recompile the step and weigh its samples differently across data-parallel ranks."""
    shuffle: bool = True
    """Shuffle the training set each epoch."""

    ALIASES: ClassVar[dict[str, str]] = {
        "per_device_train_batch_size": "batch_size",
        "eval_steps": "eval_step_interval",
        "eval_epochs": "eval_epoch_interval",
    }

    def _check(self, c: Checks) -> None:
        if c.ok("optim"):
            c.set("optim", _OPTIM_ALIASES.get(self.optim.lower(), self.optim))
        if c.ok("lr_scheduler_type"):
            c.set("lr_scheduler_type", self.lr_scheduler_type.lower())
        c.require("output_dir", bool, "must be a non-empty path")
        c.require("seed", lambda v: v >= 0, "must be >= 0")
        c.require("data_seed", lambda v: v is None or v >= 0, "must be >= 0 or None")
        c.require("batch_size", lambda v: v >= 1, "must be a positive integer (>= 1)")
        c.require("num_train_epochs", lambda v: v >= 1, "must be >= 1")
        c.require("max_steps", lambda v: v == -1 or v >= 1, "must be -1 (derive from num_train_epochs) or >= 1")
        c.require("learning_rate", lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
        c.require("lr_end", lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0")
        if c.ok("lr_end", "learning_rate") and self.lr_end > self.learning_rate > 0:
            c.problem(f"lr_end={self.lr_end!r}: must be <= learning_rate={self.learning_rate!r}")
        c.require("lr_scheduler_type", lambda v: v in LR_SCHEDULERS, f"must be one of {', '.join(LR_SCHEDULERS)}")
        c.require("warmup_steps", lambda v: v >= 0, "must be >= 0")
        c.require("warmup_ratio", lambda v: v is None or 0 <= v < 1, "must be in [0, 1) or None")
        if c.ok("warmup_steps", "warmup_ratio") and self.warmup_steps > 0 and self.warmup_ratio:
            c.problem(f"warmup_ratio={self.warmup_ratio!r}: set either warmup_steps "
                      f"(now {self.warmup_steps}) or warmup_ratio, not both")
        c.require("weight_decay", lambda v: 0 <= v < 1, "must be in [0, 1)")
        for beta in ("adam_beta1", "adam_beta2"):
            c.require(beta, lambda v: 0 <= v < 1, "must be in [0, 1)")
        c.require("adam_epsilon", lambda v: v > 0, "must be > 0 (typically 1e-8)")
        c.require("optim", lambda v: v in OPTIMIZERS,
                  f"must be one of {', '.join(OPTIMIZERS)} (or MindFormers' AdamWeightDecay / fp32_adamw)")
        c.require("max_grad_norm", lambda v: v is None or (math.isfinite(v) and v >= 0),
                  "must be >= 0 (0 or None = no clipping)")
        c.require("gradient_accumulation_steps", lambda v: v >= 1, "must be >= 1")
        c.require("save_steps", lambda v: v >= 1, "must be >= 1")
        c.require("save_strategy", lambda v: v in SAVE_STRATEGIES, f"must be one of {', '.join(SAVE_STRATEGIES)}")
        c.require("save_total_limit", lambda v: v is None or v >= 1, "must be >= 1 or None (keep all)")
        c.require("sink_size", lambda v: v >= 1, "must be >= 1")
        c.require("resume_from_checkpoint", lambda v: v is None or bool(v), "must be a path or None")
        for interval in ("eval_step_interval", "eval_epoch_interval"):
            c.require(interval, lambda v: v == -1 or v >= 1, "must be -1 (never) or >= 1")
        if (c.ok("do_eval", "eval_step_interval", "eval_epoch_interval") and self.do_eval
                and self.eval_step_interval == -1 and self.eval_epoch_interval == -1):
            c.problem("do_eval=True: eval_step_interval and eval_epoch_interval are both -1, so evaluation "
                      "would never run; set one of them >= 1 or do_eval=False")
        c.require("logging_steps", lambda v: v >= 1, "must be >= 1")
        c.require("dataloader_drop_last", bool, "False is not supported: the last incomplete batch is always "
                  "dropped (a short batch would recompile the step and weigh its samples differently across "
                  "data-parallel ranks); set it True")

    @property
    def clip_grad(self) -> bool:
        """Whether gradients are clipped (max_grad_norm set and > 0)."""
        return bool(self.max_grad_norm)

    def saves_at(self, step: int, total_steps: int, steps_per_epoch: int) -> bool:
        """Whether the run saves a checkpoint after `step` (1-based) under save_strategy."""
        if self.save_strategy == "no":
            return False
        every = steps_per_epoch if self.save_strategy == "epoch" else self.save_steps
        return step % every == 0 or step == total_steps

    @property
    def logging_interval(self) -> int:
        """Steps between loss lines: logging_steps, times sink_size when sink_mode (one report per sink)."""
        return self.logging_steps * (self.sink_size if self.sink_mode else 1)

    def get_warmup_steps(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` (from warmup_steps, else warmup_ratio)."""
        if self.warmup_steps > 0 or not self.warmup_ratio:
            return self.warmup_steps
        return int(math.ceil(self.warmup_ratio * total_steps))

    def warmup_warning(self, total_steps: int) -> str | None:
        """The warning for a warmup longer than the run (None when it fits); call once the step count is
        known.  Such a run trains anyway, its learning rate still rising at the end, as in MindFormers and
        transformers (the guide's warmup_steps=100 with a short run)."""
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ConfigError([f"total_steps={total_steps!r}: must be a positive integer"],
                              where="TrainingArguments.warmup_warning")
        warmup = self.get_warmup_steps(total_steps)
        if warmup <= total_steps:
            return None
        source = (f"warmup_steps={self.warmup_steps}" if self.warmup_steps > 0
                  else f"warmup_ratio={self.warmup_ratio} (= {warmup} steps)")
        return (f"{source}: more than the {total_steps} training steps of this run, so the learning rate never "
                f"reaches learning_rate={self.learning_rate:g} (it ends at {self.learning_rate * total_steps / warmup:.3g}); "
                f"lower warmup_steps to at most {total_steps} or train longer")
