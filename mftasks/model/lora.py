"""LoRA for the GPT-2 model: one wrapper layer plus free functions (litgpt / torchtune style).

    model = apply_lora(GPT2LMHeadModel(cfg), LoraConfig.from_model_config(cfg))
    mark_only_lora_as_trainable(model)          # train: only lora_a_* / lora_b_* get gradients
    adapter = lora_state_dict(model)            # save the adapter alone
    merge_lora_weights(model)                   # or merge_lora_state(base, adapter, lora_config) on files

`LoRADense` replaces an `nn.Dense` and keeps its `weight` / `bias` parameters (same objects, same names),
so a base checkpoint loads without remapping.  Per target it adds `lora_a_<target>` (rank, in), initialised
like PyTorch's Linear (kaiming-uniform, a=sqrt(5)), and `lora_b_<target>` (out_slice, rank), zero, so the
wrapped model starts equal to the base model.  The fused `attn.c_attn` (q | k | v along the output axis)
gets one adapter per targeted slice; the other slices are untouched.

GRAPH mode: `merged` is a Python flag read when a graph is compiled.  Merge before building the cells you
run (GPT2WithLoss, TrainOneStepCell...), or build new ones after merging; a cell compiled before the merge
would add the adapter twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, initializer

from mftasks.errors import CheckpointError, ConfigError
from mftasks.model.config import VALID_LORA_TARGETS, GPT2Config, check_lora
from mftasks.typed_config import Checks, TypedConfig

PET_METHODS: tuple[str, ...] = ("", "lora")
"""Parameter-efficient tuning methods a run may name: '' (full fine-tuning) or 'lora'."""

# Which layer of a block each target adapts (path relative to `transformer.h.<i>`).
TARGET_LAYERS: dict[str, str] = {
    "q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn",
    "attn_proj": "attn.c_proj", "mlp_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj",
}
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}


@dataclass
class LoraConfig(TypedConfig):
    """LoRA hyperparameters; the update added to W is (alpha / rank) * B @ A."""

    rank: int
    """Rank r of the update (A is (r, in), B is (out, r))."""
    alpha: float
    """Scale numerator: the update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the input of the LoRA path (0 <= dropout < 1)."""
    targets: tuple[str, ...] = ("q", "v")
    """Layers to adapt, a subset of VALID_LORA_TARGETS."""

    HAND_CHECKED: ClassVar[tuple[str, ...]] = ("targets",)  # its message lists the valid targets

    def _check(self, c: Checks) -> None:
        check_lora(c, "")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_model_config(cls, config: GPT2Config, **overrides: Any) -> LoraConfig:
        """The model preset's lora_* defaults, with some fields overridden (rank=, alpha=, ...)."""
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown override(s) {', '.join(unknown)}; valid fields: {', '.join(cls.field_names())}",
                where="LoraConfig.from_model_config",
            )
        defaults = dict(rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                        targets=config.lora_targets)
        return cls(**{**defaults, **overrides})


def target_slice(target: str, out_features: int) -> tuple[int, int]:
    """Rows [start, stop) of the layer's (out, in) weight that `target` adapts."""
    if target in _QKV_INDEX:
        n = out_features // 3
        i = _QKV_INDEX[target]
        return i * n, (i + 1) * n
    return 0, out_features


class LoRADense(nn.Cell):
    """nn.Dense (no activation) plus low-rank updates on slices of its output.

    y = x W^T + b + concat over slices of (alpha / rank) * dropout(x) A_t^T B_t^T   (until merged)

    Wrapping a tensor-parallel layer (mftasks.parallel.layers), the adapters are split like their base:
    - ColumnParallelLinear (this rank's output rows): A (r, in) whole on every rank, B (out_t / mp, r) this
      rank's rows.  x A^T is computed whole and its gradient summed over the mp group (copy region after A),
      so A's gradient is the full one on every rank.
    - RowParallelLinear (this rank's input columns): A (r, in / mp) this rank's columns, B (out, r) whole;
      x A^T is summed over the mp group (reduce region) before B.
    Merging stays local: B_local @ A (column) or B @ A_local (row) is exactly this rank's part of B @ A.
    CPU-tested (mp2, mp2 x pp2 LoRA training against one process); lora dropout under mp is untested (the
    masks of the whole-x path would have to agree across the mp group).
    """

    def __init__(self, base: nn.Dense, targets: tuple[str, ...], rank: int, alpha: float, dropout: float):
        super().__init__()
        if getattr(base, "activation_flag", False):
            raise ConfigError("LoRA wraps only Dense layers without activation", where="LoRADense")
        self.in_features, self.out_features = base.in_channels, base.out_channels
        self.split = _split_kind(base)  # "", "column" or "row"
        if self.split == "column":
            from mftasks.parallel.mappings import copy_to_model_parallel_region

            self.base_in = copy_to_model_parallel_region(base.group)  # the base layer's own input region
            self.lora_region = copy_to_model_parallel_region(base.group)
        elif self.split == "row":
            from mftasks.parallel.mappings import reduce_from_model_parallel_region

            self.base_out = reduce_from_model_parallel_region(base.group)
            self.lora_region = reduce_from_model_parallel_region(base.group)
        self.weight = base.weight  # (out, in), same Parameter object: the name stays the base one
        self.has_bias = base.has_bias
        self.bias = base.bias if base.has_bias else None
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.targets = tuple(sorted(targets, key=lambda t: target_slice(t, self.out_features)))
        self.merged = False
        for t in self.targets:
            start, stop = target_slice(t, self.out_features)
            a = initializer(HeUniform(negative_slope=math.sqrt(5)), (rank, self.in_features), ms.float32)
            setattr(self, f"lora_a_{t}", ms.Parameter(a, name=f"lora_a_{t}"))
            setattr(self, f"lora_b_{t}", ms.Parameter(initializer("zeros", (stop - start, rank), ms.float32),
                                                      name=f"lora_b_{t}"))
        self.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        # Output segments (start, stop, target or "") covering [0, out): adapted slices and the gaps between.
        segments, at = [], 0
        for t in self.targets:
            start, stop = target_slice(t, self.out_features)
            if start > at:
                segments.append((at, start, ""))
            segments.append((start, stop, t))
            at = stop
        if at < self.out_features:
            segments.append((at, self.out_features, ""))
        self.segments = tuple(segments)

    def _base(self, x):
        if self.split == "column":
            return ops.dense(self.base_in(x), self.weight, self.bias)
        if self.split == "row":
            y = self.base_out(ops.dense(x, self.weight, None))
            return y + self.bias if self.has_bias else y
        return ops.dense(x, self.weight, self.bias)  # (..., out)

    def _down(self, xd, a):
        """x A^T (..., r), whole on every rank (summed over the mp group when A is split by input)."""
        h = ops.matmul(xd, a.T)
        return self.lora_region(h) if self.split else h

    def construct(self, x):
        y = self._base(x)
        if self.merged:
            return y
        xd = self.lora_dropout(x)
        parts = []
        for start, stop, t in self.segments:
            part = y[..., start:stop]
            if t:
                a = getattr(self, "lora_a_" + t)  # (r, in)
                b = getattr(self, "lora_b_" + t)  # (out_t, r)
                part = part + ops.matmul(self._down(xd, a), b.T) * self.scale
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return ops.concat(parts, axis=-1)

    def delta(self, target: str) -> np.ndarray:
        """(alpha / rank) * B @ A for one target, shape (out_t, in)."""
        a = getattr(self, f"lora_a_{target}").asnumpy()
        b = getattr(self, f"lora_b_{target}").asnumpy()
        return (self.scale * (b.astype(np.float64) @ a.astype(np.float64))).astype(np.float32)

    def merge(self) -> None:
        """W[slice] += (alpha / rank) * B @ A for each target; a no-op when already merged."""
        if self.merged:
            return
        w = self.weight.asnumpy().copy()
        for t in self.targets:
            start, stop = target_slice(t, self.out_features)
            w[start:stop] += self.delta(t)
        self.weight.set_data(ms.Tensor(w))
        self.merged = True


def _split_kind(base: nn.Dense) -> str:
    """"column" / "row" for mftasks.parallel's tensor-parallel layers over a real group, else ""."""
    from mftasks.parallel.layers import ColumnParallelLinear, RowParallelLinear

    if getattr(base, "group", None) is None:
        return ""
    return "column" if isinstance(base, ColumnParallelLinear) else "row" if isinstance(base, RowParallelLinear) else ""


def apply_lora(model: nn.Cell, lora_config: LoraConfig) -> nn.Cell:
    """Wrap the targeted Dense layers of every block of a GPT2LMHeadModel in LoRADense (in place)."""
    if any(isinstance(c, LoRADense) for _, c in model.cells_and_names()):
        raise ConfigError("the model already has LoRA layers; apply_lora once per model", where="apply_lora")
    layers: dict[str, list[str]] = {}
    for t in lora_config.targets:
        layers.setdefault(TARGET_LAYERS[t], []).append(t)
    for block in model.transformer.h:
        for path, targets in layers.items():
            parent_name, attr = path.split(".")
            parent = getattr(block, parent_name)
            wrapped = LoRADense(getattr(parent, attr), tuple(targets), lora_config.rank, lora_config.alpha,
                                lora_config.dropout)
            setattr(parent, attr, wrapped)
    # Re-attaching cells renames parameters relative to their new parent: restore full names.
    for name, param in model.parameters_and_names():
        param.name = name
    model.lora_config = lora_config
    return model


def lora_filter(name: str) -> bool:
    """True for LoRA adapter parameters (`...lora_a_q`, `...lora_b_v`, ...)."""
    return name.rsplit(".", 1)[-1].startswith("lora_")


def mark_only_lora_as_trainable(model: nn.Cell) -> nn.Cell:
    """requires_grad=False on every base parameter, True on the adapters; returns the model."""
    params = model.get_parameters()
    names = [p.name for p in params]
    if not any(lora_filter(n) for n in names):
        raise ConfigError("the model has no LoRA parameters: call apply_lora first",
                          where="mark_only_lora_as_trainable")
    for p in model.get_parameters():
        p.requires_grad = lora_filter(p.name)
    return model


def lora_state_dict(model: nn.Cell) -> dict[str, np.ndarray]:
    """The adapter weights only, name -> array."""
    return {p.name: p.asnumpy() for p in model.get_parameters() if lora_filter(p.name)}


def merge_lora_weights(model: nn.Cell) -> nn.Cell:
    """Fold every adapter into its base weight in place (safe to call twice); returns the model."""
    for _, cell in model.cells_and_names():
        if isinstance(cell, LoRADense):
            cell.merge()
    return model


def merge_lora_state(base: dict[str, np.ndarray], adapter: dict[str, np.ndarray],
                     lora_config: LoraConfig) -> dict[str, np.ndarray]:
    """merge_lora_weights on plain name -> array dicts: returns the base weights with the adapter folded in.

    Adapter keys look like `<layer>.lora_a_<target>` / `<layer>.lora_b_<target>` and adapt
    `<layer>.weight` of `base`.  LoRA keys present in `base` are dropped from the result.  Shape or
    naming problems raise CheckpointError naming the parameter and the shapes.
    """
    problems = []
    merged = {k: v for k, v in base.items() if not lora_filter(k)}
    pairs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in adapter.items():
        layer, _, leaf = key.rpartition(".")
        kind, target = leaf[:6], leaf[7:]  # "lora_a", "q"
        if not lora_filter(key) or kind not in ("lora_a", "lora_b") or target not in VALID_LORA_TARGETS:
            problems.append(f"{key}: not a LoRA adapter key (expected <layer>.lora_a_<target> / lora_b_<target>)")
            continue
        pairs.setdefault((layer, target), {})[kind] = np.asarray(value)
    for (layer, target), ab in sorted(pairs.items()):
        where = f"{layer}.lora_*_{target}"
        if set(ab) != {"lora_a", "lora_b"}:
            missing = ({"lora_a", "lora_b"} - set(ab)).pop()
            problems.append(f"{where}: adapter has no {layer}.{missing}_{target}")
            continue
        if target not in lora_config.targets:
            problems.append(f"{where}: target {target!r} is not in lora_config.targets={list(lora_config.targets)}")
            continue
        wkey = f"{layer}.weight"
        if wkey not in base:
            problems.append(f"{where}: base checkpoint has no {wkey}")
            continue
        w, a, b = np.asarray(base[wkey]), ab["lora_a"], ab["lora_b"]
        start, stop = target_slice(target, w.shape[0])
        expect_a = (lora_config.rank, w.shape[1])
        expect_b = (stop - start, lora_config.rank)
        if w.ndim != 2 or a.shape != expect_a or b.shape != expect_b:
            problems.append(
                f"{where}: shapes do not fit: base {wkey} {tuple(w.shape)}, lora_a_{target} {tuple(a.shape)} "
                f"(expected {expect_a}), lora_b_{target} {tuple(b.shape)} (expected {expect_b}) for rank "
                f"{lora_config.rank}"
            )
            continue
        out = np.array(merged[wkey], dtype=w.dtype, copy=True)
        delta = lora_config.scale * (b.astype(np.float64) @ a.astype(np.float64))
        out[start:stop] += delta.astype(w.dtype)
        merged[wkey] = out
    if problems:
        raise CheckpointError("cannot merge the LoRA adapter into the base weights:\n"
                              + "\n".join(f"  - {p}" for p in problems))
    return merged
