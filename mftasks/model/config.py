"""GPT-2 model configuration: one validated dataclass and the presets as plain data.

    cfg = GPT2Config.from_name("gpt2_tiny", dropout=0.0)
    cfg.to_dict()  # saved beside checkpoints; GPT2Config.from_dict(...) reads it back
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mftasks.errors import ConfigError
from mftasks.typed_config import Checks, TypedConfig

# Layers LoRA can target.  q, k and v are slices of the fused `attn.c_attn` projection.
VALID_LORA_TARGETS: tuple[str, ...] = ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")


@dataclass(kw_only=True)
class GPT2Config(TypedConfig):
    """Shape and regularisation of a GPT-2 decoder (all fields keyword-only); `to_dict` / `from_dict` (from
    TypedConfig) write and read it beside checkpoints."""

    name: str = "custom"
    """Preset name, or "custom"; only recorded, never interpreted."""
    n_layer: int
    """Number of transformer blocks."""
    n_embd: int
    """Hidden width; must be divisible by n_head."""
    n_head: int
    """Attention heads per block."""
    seq_length: int
    """Maximum context (learned positions); training samples hold seq_length + 1 tokens."""
    vocab_size: int
    """Rows of the (tied) token embedding."""
    dropout: float = 0.1
    """Dropout on embeddings, attention output and MLP output (residual branches)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_epsilon: float = 1e-5
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Std of the normal initialisation (residual projections get /sqrt(2 * n_layer))."""
    lora_rank: int = 8
    """Default LoRA rank for this model."""
    lora_alpha: float = 16.0
    """Default LoRA alpha (the update is scaled by alpha / rank)."""
    lora_dropout: float = 0.05
    """Default dropout on the LoRA input path."""
    lora_targets: tuple[str, ...] = ("q", "v")
    """Default LoRA targets, a subset of VALID_LORA_TARGETS."""

    HAND_CHECKED: ClassVar[tuple[str, ...]] = ("lora_targets",)  # its message lists the valid targets

    def _check(self, c: Checks) -> None:
        c.require("name", bool, "must be a non-empty string")
        for name in ("n_layer", "n_embd", "n_head", "seq_length", "vocab_size"):
            c.require(name, lambda v: v > 0, "must be a positive integer")
        if c.ok("n_embd", "n_head") and self.n_head > 0 and self.n_embd % self.n_head:
            c.problem(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                      "pick n_head so that head_dim = n_embd / n_head is an integer")
        for name in ("dropout", "attention_dropout"):
            c.require(name, lambda v: 0.0 <= v < 1.0, f"must be a number with 0 <= {name} < 1")
        for name in ("layer_norm_epsilon", "initializer_range"):
            c.require(name, lambda v: v > 0, "must be a positive number")
        check_lora(c, "lora_")

    def _where(self) -> str:
        return f"GPT2Config(name={self.name!r})"

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPT2Config:
        """The preset `name` with some fields overridden, e.g. from_name("gpt2", dropout=0.0)."""
        if name not in PRESETS:
            raise ConfigError(
                f"unknown model preset {name!r}; valid names: {', '.join(PRESETS)}", where="GPT2Config.from_name"
            )
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown override(s) {', '.join(unknown)} for preset {name!r}; "
                f"valid fields: {', '.join(cls.field_names())}",
                where="GPT2Config.from_name",
            )
        return cls(**{**PRESETS[name], **overrides})


def check_lora(c: Checks, prefix: str) -> None:
    """The checks of the four LoRA settings, shared by GPT2Config (`lora_rank`, ...; prefix "lora_") and
    LoraConfig (`rank`, ...; prefix "")."""
    rank, alpha, dropout, targets = (f"{prefix}{n}" for n in ("rank", "alpha", "dropout", "targets"))
    if isinstance(getattr(c.obj, targets), list):  # from YAML / JSON
        c.set(targets, tuple(getattr(c.obj, targets)))
    c.require(rank, lambda v: v > 0, "must be a positive integer")
    c.require(alpha, lambda v: v > 0, "must be a positive number")
    c.require(dropout, lambda v: 0.0 <= v < 1.0, f"must be a number with 0 <= {dropout} < 1")
    c.extend(lora_targets_problems(getattr(c.obj, targets), targets))


def lora_targets_problems(targets: Any, field: str) -> list[str]:
    """Problems with a LoRA target list (shared by GPT2Config and LoraConfig)."""
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets:
        return [f"{field}={targets!r} must be a non-empty list of targets from {', '.join(VALID_LORA_TARGETS)}"]
    problems = []
    bad = [t for t in targets if t not in VALID_LORA_TARGETS]
    if bad:
        problems.append(
            f"{field} has unknown target(s) {', '.join(map(repr, bad))}; valid targets: {', '.join(VALID_LORA_TARGETS)}"
        )
    if len(set(targets)) != len(targets):
        problems.append(f"{field}={list(targets)!r} lists a target twice")
    return problems


# Presets: plain data.  The reference sizes share the GPT-2 BPE vocabulary and MindFormers' gpt2_lora values
# (rank 64, alpha 128, dropout 0.1, query and value); the CPU presets are small enough to train on two cores.
_REFERENCE = dict(vocab_size=50257, lora_rank=64, lora_alpha=128.0, lora_dropout=0.1)
_PRESET_LIST: list[dict[str, Any]] = [
    dict(name="gpt2", n_layer=12, n_embd=768, n_head=12, seq_length=1024, **_REFERENCE),
    dict(name="gpt2_medium", n_layer=24, n_embd=1024, n_head=16, seq_length=1024, **_REFERENCE),
    dict(name="gpt2_large", n_layer=36, n_embd=1280, n_head=20, seq_length=1024, **_REFERENCE),
    dict(name="gpt2_xl", n_layer=48, n_embd=1600, n_head=25, seq_length=1024, **_REFERENCE),
    dict(name="gpt2_13b", n_layer=40, n_embd=5120, n_head=40, seq_length=2048, **_REFERENCE),
    dict(name="gpt2_52b", n_layer=64, n_embd=8192, n_head=32, seq_length=2048, **_REFERENCE),
    # CPU presets (vocab sized for a small SentencePiece tokenizer; override vocab_size to match yours).
    dict(name="gpt2_tiny", n_layer=2, n_embd=64, n_head=2, seq_length=64, vocab_size=512,
         lora_rank=4, lora_alpha=8.0, lora_dropout=0.0),
    dict(name="gpt2_small_cpu", n_layer=4, n_embd=256, n_head=4, seq_length=256, vocab_size=16000,
         lora_rank=8, lora_alpha=16.0, lora_dropout=0.05),
]
PRESETS: dict[str, dict[str, Any]] = {p["name"]: p for p in _PRESET_LIST}
