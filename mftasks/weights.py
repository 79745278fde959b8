"""Model weights in and out of checkpoints: load with shape checks, fit checks between model, checkpoint
and dataset, and the base of a LoRA adapter."""
from __future__ import annotations

from . import checkpoint as ckpt
from .errors import CheckpointError, DataError

SHAPE_FIELDS = ("n_layer", "n_embd", "n_head", "seq_length", "vocab_size")


def _origin(info: ckpt.CheckpointInfo) -> str:
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
                              f"{', '.join(missing)}, which {purpose} needs; {_origin(info)}. Use a checkpoint "
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
    from pathlib import Path

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
