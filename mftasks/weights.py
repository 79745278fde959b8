"""Model weights in and out of checkpoints: load with shape checks, fit checks between model, checkpoint
and dataset, and the base of a LoRA adapter."""
from __future__ import annotations

from . import checkpoint as ckpt
from .errors import CheckpointError, DataError

SHAPE_FIELDS = ("n_layer", "n_embd", "n_head", "seq_length", "vocab_size")


def config_of(info: ckpt.CheckpointInfo):
    from .model import GPT2Config

    return GPT2Config.from_dict(info.manifest["model_config"])


def base_of(info: ckpt.CheckpointInfo) -> ckpt.CheckpointInfo:
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
    if info is not None and manifest["tokenizer"]["sha256"] != info.manifest["tokenizer"]["sha256"]:
        problems.append(f"tokenizer: dataset {folder} was tokenized with another tokenizer than checkpoint "
                        f"{info.path.name} (prepare it with --tokenizer {info.manifest['tokenizer']['path']})")
    if problems:
        raise DataError("the dataset does not fit the model:\n" + "\n".join(f"  - {p}" for p in problems))


def full_weights(info: ckpt.CheckpointInfo) -> dict:
    import mindspore as ms

    if info.kind != "full":
        raise CheckpointError(f"{info.path} is a {info.kind} checkpoint, not full model weights")
    return ms.load_checkpoint(str(info.path))


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
