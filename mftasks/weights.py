"""Model weights in and out of checkpoints: load with shape checks, fit checks between model, checkpoint
and dataset, and the base of a LoRA adapter.  `ModelChoice` is the model a Trainer was given, resolved once."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint as ckpt
from .errors import CheckpointError, ConfigError, DataError
from .files import sha256_file

if TYPE_CHECKING:
    from .model import GPT2Config, GPT2LMHeadModel

SHAPE_FIELDS = ("n_layer", "n_embd", "n_head", "seq_length", "vocab_size")


def origin(info: ckpt.CheckpointInfo) -> str:
    """How a checkpoint whose manifest lacks its history came to be (for messages)."""
    m = info.manifest
    if m.get("converted_from"):
        src = m["converted_from"]
        how = "" if src.get("manifest", True) else " (a file with no manifest)"
        return f"it was converted from {src.get('path')}{how} by `mftasks ckpt convert`, which had no history to keep"
    if m.get("stage") == "import":
        return "it was imported with `mftasks ckpt import-hf`, which knows no history"
    return "it was not written by an mftasks training run"


def require(info: ckpt.CheckpointInfo, fields: dict[str, str], purpose: str) -> None:
    """CheckpointError naming every manifest field in `fields` (name -> what it is) that is missing or empty."""
    missing = [f"{name} ({what})" for name, what in fields.items() if not info.manifest.get(name)]
    if missing:
        raise CheckpointError(f"{info.path}: its manifest ({info.manifest_path.name}) does not record "
                              f"{', '.join(missing)}, which {purpose} needs; {origin(info)}. Use a checkpoint "
                              "written by `mftasks run` (or converted from one that has a manifest)")


def config_of(info: ckpt.CheckpointInfo):
    from .model import GPT2Config

    require(info, {"model_config": "the model's shape"}, "loading its weights")
    try:
        return GPT2Config.from_dict(info.manifest["model_config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{info.path}: its manifest's model_config is not a valid model config ({exc}); "
                              "use a checkpoint written by `mftasks run`") from None


def read_params(path) -> dict:
    """Every entry of a checkpoint file, .ckpt or .safetensors (the format follows the suffix)."""
    from .ckpt.formats import load_weights as load_file

    return load_file(path)


def tokenizer_problem(info: ckpt.CheckpointInfo, manifest: dict, folder, flag: str) -> str | None:
    """Why dataset `folder` (its `manifest`, given as `flag`) was not tokenized with the tokenizer the
    checkpoint's weights were trained with; None when it was, or when the checkpoint records none."""
    theirs = info.manifest.get("tokenizer")
    if not theirs:
        return None
    ours = manifest["tokenizer"]
    if ours["sha256"] == theirs.get("sha256"):
        return None
    trained_on = info.manifest.get("dataset") or "an unrecorded dataset"
    return (f"tokenizer: {flag} {folder} was tokenized with another tokenizer than checkpoint {info.path.name}: "
            f"the dataset's is {Path(folder) / ours['file']} (sha256 {ours['sha256'][:12]}, vocab_size "
            f"{ours['vocab_size']}), the checkpoint's is {theirs.get('path')} (sha256 "
            f"{str(theirs.get('sha256'))[:12]}, from dataset {trained_on}); the same vocabulary size does not make "
            f"the token ids mean the same: prepare the data again with --tokenizer {theirs.get('path')}, or use a "
            f"checkpoint trained with this dataset's tokenizer")


def base_of(info: ckpt.CheckpointInfo) -> ckpt.CheckpointInfo:
    require(info, {"base": "the full checkpoint the adapter was trained on",
                   "lora_config": "the adapter's LoRA settings"}, "loading a LoRA adapter")
    ref = info.manifest.get("base") or {}
    base = ckpt.load_verified(ref.get("path", ""))
    if base.sha256 != ref.get("sha256"):
        raise CheckpointError(f"adapter {info.path} was trained on base {ref.get('path')} with sha256 "
                              f"{ref.get('sha256', '')[:12]}, but that file now has {base.sha256[:12]}")
    return base


def check_same_shape(start: ckpt.CheckpointInfo, cfg) -> None:
    have = config_of(start)
    diff = [f"{f} {getattr(have, f)} (checkpoint) vs {getattr(cfg, f)} (model)" for f in SHAPE_FIELDS
            if getattr(have, f) != getattr(cfg, f)]
    if diff:
        raise CheckpointError(f"{start.path} does not fit this model: " + "; ".join(diff))


def check_compatible(cfg, manifest: dict, folder: str, info) -> None:
    problems = []
    if manifest["tokenizer"]["vocab_size"] != cfg.vocab_size:
        problems.append(f"vocab_size: model {cfg.vocab_size}, dataset {folder} {manifest['tokenizer']['vocab_size']}")
    if manifest["seq_length"] != cfg.seq_length:
        problems.append(f"seq_length: model {cfg.seq_length}, dataset {folder} {manifest['seq_length']} "
                        f"(prepare it with --seq-length {cfg.seq_length})")
    if info is not None:
        problem = tokenizer_problem(info, manifest, folder, "dataset")
        if problem:
            problems.append(problem)
    if problems:
        raise DataError("the dataset does not fit the model:\n" + "\n".join(f"  - {p}" for p in problems))


def full_weights(info: ckpt.CheckpointInfo) -> dict:
    if info.kind != "full":
        raise CheckpointError(f"{info.path} is a {info.kind} checkpoint, not full model weights")
    return read_params(info.path)


def check_shapes(net, params: dict, path) -> None:
    problems = []
    for p in net.get_parameters():
        if p.name in params and tuple(params[p.name].shape) != tuple(p.shape):
            problems.append(f"{p.name}: checkpoint {tuple(params[p.name].shape)}, model {tuple(p.shape)}")
    if problems:
        raise CheckpointError(f"{path} does not fit the model (shape mismatch):\n"
                              + "\n".join(f"  - {x}" for x in problems[:10]))


def load_weights(net, params: dict, path, lora_only: bool = False) -> None:
    """Model parameters from a checkpoint (optimizer entries ignored); every model parameter must be there."""
    import mindspore as ms

    from .model import lora_filter

    check_shapes(net, params, path)
    wanted = [p.name for p in net.get_parameters() if lora_filter(p.name) == lora_only]
    missing = [n for n in wanted if n not in params]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} model parameter(s), e.g. {missing[:3]}")
    ms.load_param_into_net(net, {n: params[n] for n in wanted}, strict_load=False)


def network_of(info: ckpt.CheckpointInfo) -> GPT2LMHeadModel:
    """A network holding a verified checkpoint's weights: full weights, or a LoRA adapter over its base."""
    from .model import GPT2LMHeadModel, LoraConfig, apply_lora

    net = GPT2LMHeadModel(config_of(info))
    if info.kind == "lora_adapter":
        base = base_of(info)
        load_weights(net, full_weights(base), base.path)
        apply_lora(net, LoraConfig(**info.manifest["lora_config"]))
        load_weights(net, read_params(info.path), info.path, lora_only=True)
    else:
        load_weights(net, full_weights(info), info.path)
    return net


def tokenizer_file(info: ckpt.CheckpointInfo, dataset) -> Path | None:
    """The tokenizer file a checkpoint's weights were trained with, checked against its manifest's sha256;
    None (with a warning: eval_dataset's token ids are used as they are) when the manifest records none."""
    if not info.manifest.get("tokenizer"):
        logging.getLogger("mftasks").warning(
            "checkpoint %s records no tokenizer (%s): cannot check that eval_dataset %s was tokenized with "
            "the tokenizer its weights were trained with", info.path, origin(info), dataset)
        return None
    tokenizer = Path(info.manifest["tokenizer"]["path"])
    if not tokenizer.is_file() or sha256_file(tokenizer) != info.manifest["tokenizer"]["sha256"]:
        raise CheckpointError(f"{info.path}: its tokenizer {tokenizer} is missing or changed (sha256 differs "
                              "from the manifest)")
    return tokenizer


def check_tokenizer_fits(info: ckpt.CheckpointInfo, manifest: dict, dataset, stage: str, what: str) -> None:
    """DataError when train_dataset was tokenized with another tokenizer than checkpoint `info` (`what` it is
    to the run): its weights were trained on other token ids.  A checkpoint that records none is warned of."""
    problem = tokenizer_problem(info, manifest, dataset, "train_dataset")
    if problem:
        raise DataError(f"{stage} refused before step 1: train_dataset does not fit {what}:\n  - {problem}")
    if not info.manifest.get("tokenizer"):
        logging.getLogger("mftasks").warning(
            "checkpoint %s records no tokenizer (%s): cannot check that train_dataset %s was tokenized with "
            "the tokenizer its weights were trained with; the new checkpoints record the dataset's",
            info.path, origin(info), dataset)


def model_problems(model) -> list[str]:
    """Why `model` (Trainer's argument) is not a preset name, a preset dict, a GPT2Config or a GPT2LMHeadModel."""
    from .model import PRESETS, GPT2Config, GPT2LMHeadModel

    if isinstance(model, str) and model not in PRESETS:
        return [f"model={model!r} is not a known model; valid: {', '.join(PRESETS)}"]
    if isinstance(model, dict) and model.get("model_type", "gpt2") not in PRESETS:
        return [f"model_type={model.get('model_type')!r} is not a known model; valid: {', '.join(PRESETS)}"]
    if not isinstance(model, (str, dict, GPT2Config, GPT2LMHeadModel)):
        return [f"model={type(model).__name__} must be a model name, a GPT2Config or a GPT2LMHeadModel"]
    return []


@dataclass(frozen=True)
class ModelChoice:
    """The model a Trainer was given (`str | dict | GPT2Config | GPT2LMHeadModel`), resolved once."""

    name: str | None = None
    """A preset: its config is built for each dataset's vocabulary."""
    overrides: dict = field(default_factory=dict)
    """The preset's fields a dict overrode."""
    given_config: GPT2Config | None = None
    """A GPT2Config used as it is: its vocabulary must fit the dataset."""
    network: GPT2LMHeadModel | None = None
    """A GPT2LMHeadModel trained as it is (its config is its `.config`)."""

    @classmethod
    def of(cls, model) -> ModelChoice:
        """`model` after `model_problems` found none."""
        from .model import GPT2LMHeadModel

        if isinstance(model, str):
            return cls(name=model)
        if isinstance(model, dict):
            return cls(name=model.get("model_type", "gpt2"),
                       overrides={k: v for k, v in model.items() if k != "model_type"})
        if isinstance(model, GPT2LMHeadModel):
            return cls(network=model)
        return cls(given_config=model)

    def config(self, vocab_size: int) -> GPT2Config:
        """The config: a preset's with `vocab_size`, else the given one as it is."""
        from .model import GPT2Config

        if self.name is not None:
            return GPT2Config.from_name(self.name, vocab_size=vocab_size, **self.overrides)
        return self.network.config if self.network is not None else self.given_config

    def config_for(self, manifest: dict, where: str) -> GPT2Config:
        """The model config for a dataset: vocabulary from its tokenizer, seq_length checked against it."""
        vocab, seq = manifest["tokenizer"]["vocab_size"], manifest["seq_length"]
        cfg = self.config(vocab)
        if self.name is None and cfg.vocab_size != vocab:
            raise ConfigError(f"the model's vocab_size is {cfg.vocab_size} but {where} was tokenized with "
                              f"vocab_size {vocab}; use a model config with vocab_size={vocab}", where="Trainer")
        if cfg.seq_length != seq:
            raise ConfigError(f"model {cfg.name} has seq_length {cfg.seq_length} but {where} was prepared with "
                              f"--seq-length {seq}; prepare the data with --seq-length {cfg.seq_length} "
                              f"or use a model with seq_length {seq}", where="Trainer")
        return cfg

    def check_matches(self, info: ckpt.CheckpointInfo) -> None:
        """The checkpoint's model must be this one (the vocabulary may differ)."""
        cfg = config_of(info)
        want = self.config(cfg.vocab_size)
        diff = [f"{f} {getattr(cfg, f)} (checkpoint) vs {getattr(want, f)} (model={want.name})"
                for f in SHAPE_FIELDS if getattr(cfg, f) != getattr(want, f)]
        if diff:
            raise CheckpointError(f"{info.path} holds a model of another shape: " + "; ".join(diff)
                                  + "; pass the matching model or another checkpoint")


def restore_training_state(step_cell, info: ckpt.CheckpointInfo) -> int:
    """Load a checkpoint a run resumes into its train step cell (weights and optimizer state); its global_step.

    The LR schedule is rebuilt from this run's arguments (a resumed run may train longer); its position is
    global_step, which is restored."""
    import mindspore as ms

    params = read_params(info.path)
    params.pop("learning_rate", None)
    check_shapes(step_cell, params, info.path)
    missing, _ = ms.load_param_into_net(step_cell, params, strict_load=False)
    missing = [m for m in missing if m != "learning_rate"
               and (m in {p.name for p in step_cell.trainable_params()} or "adam" in m)]
    if missing:
        raise CheckpointError(f"{info.path} lacks {len(missing)} parameter(s) of this run "
                              f"(e.g. {missing[:3]}); it was written by another kind of run")
    return int(info.global_step)
