"""Checkpoint files: MindSpore `.ckpt` and safetensors, the GPT-2 name table, conversion, Hugging Face import.

    weights = load_weights("x.ckpt", model_only=True)   # name -> mindspore Parameter, no optimizer state
    save_weights(weights, "x.safetensors")              # the format follows the suffix
    convert("x.ckpt", "x.safetensors")                  # keeps every entry and writes a manifest
    import_hf_gpt2("model.safetensors", "gpt2.ckpt", GPT2Config.from_name("gpt2"))

Our parameter names are GPT2LMHeadModel's (`transformer.h.0.attn.c_attn.weight`, LayerNorm `gamma` /
`beta`, Embedding `embedding_table`); Dense weights are (out, in).  Hugging Face's GPT-2 uses Conv1D,
whose weights are (in, out): the import transposes them.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError

FORMATS = {".ckpt": "ckpt", ".safetensors": "safetensors"}

# Entries a training checkpoint holds beside the model: optimizer moments, accumulation buffers, counters.
OPTIMIZER_PREFIXES = ("adam_m", "adam_v", "moment1", "moment2", "moments", "accu_grads", "lamb_m", "lamb_v")
TRAINING_STATE = ("global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense", "loss_scale",
                  "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num")


def format_of(path: str | Path) -> str:
    """'ckpt' or 'safetensors' from the file name; ConfigError for anything else."""
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; name the file "
                          f"*.ckpt (MindSpore) or *.safetensors")
    return FORMATS[suffix]


def is_model_weight(name: str) -> bool:
    """True for model parameters; False for optimizer state and training counters."""
    return name.split(".", 1)[0] not in OPTIMIZER_PREFIXES and name not in TRAINING_STATE


def load_weights(path: str | Path, model_only: bool = False) -> dict:
    """name -> mindspore Parameter, in file order (optionally model weights only)."""
    return _load(path, is_model_weight if model_only else None)


def load_model_weights(path: str | Path) -> tuple[dict, set[str]]:
    """(model weights, names of the other entries skipped): the skipped ones are never materialised."""
    skipped = set()

    def keep(name: str) -> bool:
        if is_model_weight(name):
            return True
        skipped.add(name)
        return False

    return _load(path, keep), skipped


def _load(path: str | Path, choice_func) -> dict:
    import mindspore as ms

    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return ms.load_checkpoint(str(path), format=fmt, choice_func=choice_func)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable {fmt} checkpoint ({exc})") from None


def save_weights(weights: dict, path: str | Path) -> None:
    """Write name -> Parameter / Tensor / numpy array in the format the suffix names (the one writer here)."""
    import mindspore as ms

    items = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))}
             for name, value in weights.items()]
    ms.save_checkpoint(items, str(path), format=format_of(path))


def as_numpy(value) -> np.ndarray:
    """A Parameter / Tensor as numpy (bfloat16 widened to float32, exactly)."""
    import mindspore as ms

    if isinstance(value, np.ndarray):
        return value
    if value.dtype == ms.bfloat16:
        value = value.astype(ms.float32)
    return value.asnumpy()


# ---------------------------------------------------------------------------------------------- GPT-2 names
def gpt2_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every GPT2LMHeadModel parameter name -> shape, in the model's order, from its config alone."""
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.seq_length
    shapes = {"transformer.wte.embedding_table": (V, C), "transformer.wpe.embedding_table": (T, C)}
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}"
        shapes.update({
            f"{h}.ln_1.gamma": (C,), f"{h}.ln_1.beta": (C,),
            f"{h}.attn.c_attn.weight": (3 * C, C), f"{h}.attn.c_attn.bias": (3 * C,),
            f"{h}.attn.c_proj.weight": (C, C), f"{h}.attn.c_proj.bias": (C,),
            f"{h}.ln_2.gamma": (C,), f"{h}.ln_2.beta": (C,),
            f"{h}.mlp.c_fc.weight": (4 * C, C), f"{h}.mlp.c_fc.bias": (4 * C,),
            f"{h}.mlp.c_proj.weight": (C, 4 * C), f"{h}.mlp.c_proj.bias": (C,),
        })
    shapes.update({"transformer.ln_f.gamma": (C,), "transformer.ln_f.beta": (C,)})
    return shapes


def shape_problems(weights: dict, cfg, where: str) -> list[str]:
    """Each model parameter that is missing from `weights` or has another shape than the config gives."""
    problems = []
    for name, shape in gpt2_shapes(cfg).items():
        if name not in weights:
            problems.append(f"{where}: no {name} (the model {cfg.name} has it, shape {shape})")
        elif tuple(weights[name].shape) != shape:
            problems.append(f"{name}: {where} has shape {tuple(weights[name].shape)}, the model {cfg.name} "
                            f"expects {shape}")
    return problems


def hf_gpt2_table(n_layer: int) -> dict[str, tuple[str, bool]]:
    """Our name -> (Hugging Face name without the `transformer.` prefix, transpose?)."""
    table = {"transformer.wte.embedding_table": ("wte.weight", False),
             "transformer.wpe.embedding_table": ("wpe.weight", False)}
    for i in range(n_layer):
        for ln in ("ln_1", "ln_2"):
            table[f"transformer.h.{i}.{ln}.gamma"] = (f"h.{i}.{ln}.weight", False)
            table[f"transformer.h.{i}.{ln}.beta"] = (f"h.{i}.{ln}.bias", False)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):  # Conv1D: (in, out)
            table[f"transformer.h.{i}.{layer}.weight"] = (f"h.{i}.{layer}.weight", True)
            table[f"transformer.h.{i}.{layer}.bias"] = (f"h.{i}.{layer}.bias", False)
    table["transformer.ln_f.gamma"] = ("ln_f.weight", False)
    table["transformer.ln_f.beta"] = ("ln_f.bias", False)
    return table


# Entries of a Hugging Face GPT-2 file that are not weights: the causal-mask buffers of old exports.
_HF_BUFFERS = re.compile(r"^h\.\d+\.attn\.(masked_)?bias$")


def import_hf_gpt2(path: str | Path, out_path: str | Path, config) -> Path:
    """A Hugging Face GPT-2 safetensors file -> one of our full checkpoints (with a manifest) at out_path.

    `config` is a GPT2Config (or a preset name); every tensor is checked against it, and every problem
    (missing, unexpected, wrong shape: the parameter and both shapes) is reported at once.
    """
    from safetensors import safe_open

    from ..files import sha256_file
    from ..model import GPT2Config
    from .derived import estimate, prepare_output, publish

    path, out_path = Path(path), Path(out_path)
    cfg = GPT2Config.from_name(config) if isinstance(config, str) else config
    prepare_output(out_path, [path], where="mftasks ckpt import-hf")
    if not path.is_file():
        raise CheckpointError(f"Hugging Face checkpoint {path} does not exist")
    try:
        f = safe_open(str(path), framework="np")
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    with f:
        keys = {k.removeprefix("transformer."): k for k in f.keys()}
        table, expected = hf_gpt2_table(cfg.n_layer), gpt2_shapes(cfg)
        problems, weights = [], {}
        for ours, (hf, transpose) in table.items():
            if hf not in keys:
                problems.append(f"{path.name} has no {hf} (for {ours})")
                continue
            shape = tuple(f.get_slice(keys[hf]).get_shape())
            got = shape[::-1] if transpose else shape
            if got != expected[ours]:
                how = f"{shape} transposed to {got}" if transpose else f"{shape}"
                problems.append(f"{ours} (from {hf}): the file gives {how}, the model {cfg.name} expects "
                                f"{expected[ours]}")
                continue
            array = f.get_tensor(keys[hf])
            weights[ours] = np.ascontiguousarray(array.T if transpose else array, dtype=np.float32)
        used = {hf for hf, _ in table.values()}
        unexpected = sorted(k for k in keys if k not in used and not _HF_BUFFERS.match(k) and k != "lm_head.weight")
        if unexpected:
            problems.append(f"{path.name} holds {len(unexpected)} tensor(s) a GPT-2 of {cfg.n_layer} layers does "
                            f"not have, e.g. {unexpected[:5]} (another architecture, or more layers)")
        if "lm_head.weight" in keys and "transformer.wte.embedding_table" in weights:
            head = f.get_tensor(keys["lm_head.weight"])
            if head.shape != weights["transformer.wte.embedding_table"].shape or not np.array_equal(
                    head.astype(np.float32), weights["transformer.wte.embedding_table"]):
                problems.append("lm_head.weight differs from wte.weight: the model ties its head to the token "
                                "embedding, so an untied head cannot be imported")
    if problems:
        raise CheckpointError(f"cannot import {path} as {cfg.name}:\n" + "\n".join(f"  - {p}" for p in problems))
    manifest = {"prefix": out_path.stem, "stage": "import", "kind": "full", "global_step": 0, "epoch": 0,
                "step_in_epoch": 0, "loss": None, "model_config": cfg.to_dict(), "pet_method": "",
                "training_args": None, "dataset_id": None, "dataset": None, "tokenizer": None, "parent": None,
                "imported_from": {"path": str(path.resolve()), "sha256": sha256_file(path),
                                  "format": "huggingface-gpt2-safetensors"}}
    return publish(out_path, lambda tmp: save_weights(weights, tmp), manifest, needed=estimate(weights)).path


def convert(src: str | Path, dst: str | Path) -> Path:
    """The same entries in another format (.ckpt <-> .safetensors); returns dst.

    Verification stays honest: a source its manifest vouches for (size, sha256, and for full weights the
    model config's shapes) converts to an output with a manifest carrying the source's history (model
    config, tokenizer, dataset, parents) plus `converted_from`.  A source without a manifest converts to a
    file without one: it stays unverified (`ckpt verify`, eval and predict refuse it).  A source whose
    manifest no longer matches it is refused (CheckpointError), nothing written.
    """
    from .. import checkpoint as ckpt
    from .derived import estimate, has_manifest, lineage, output_problems, prepare_output, publish

    src, dst = Path(src), Path(dst)
    problems = []
    if src.suffix not in FORMATS:
        problems.append(f"SRC {src}: unknown checkpoint format {src.suffix or '(no suffix)'!r}; name the file "
                        "*.ckpt (MindSpore) or *.safetensors")
    problems += output_problems(dst, [src], "DST")
    ConfigError.raise_if(problems, "mftasks ckpt convert")
    prepare_output(dst, [src], "DST", where="mftasks ckpt convert")
    if not src.is_file():
        raise CheckpointError(f"checkpoint {src} does not exist" if not src.exists() else
                              f"{src} is not a checkpoint file")
    info = ckpt.load_verified(src) if has_manifest(src) else None  # CheckpointError when it no longer matches
    weights = load_weights(src)
    if not weights:
        raise CheckpointError(f"{src} holds no tensors")
    manifest = None
    if info is not None:
        cfg = info.manifest.get("model_config")
        if info.kind == "full" and cfg:
            from ..model import GPT2Config

            wrong = shape_problems({n: w for n, w in weights.items() if is_model_weight(n)},
                                   GPT2Config.from_dict(cfg), str(src))
            if wrong:
                raise CheckpointError(f"{src} does not hold the model its manifest describes, so it is not converted:\n"
                                      + "\n".join(f"  - {p}" for p in wrong))
        manifest = {**lineage(info.manifest), "converted_from": {"path": str(src.resolve()), "sha256": info.sha256,
                                                                 "format": format_of(src)}}
        if format_of(src) == format_of(dst):
            manifest["converted_from"]["note"] = "same format: re-serialized"
    return publish(dst, lambda tmp: save_weights(weights, tmp), manifest, needed=estimate(weights)).path
