"""GPT-2 network, configuration, LoRA and generation (MindSpore)."""
from mftasks.model.config import PRESETS, VALID_LORA_TARGETS, GPT2Config
from mftasks.model.generate import (
    CachedDecoder,
    KVCache,
    RecomputeDecoder,
    apply_repetition_penalty,
    generate,
    next_token,
    sample,
)
from mftasks.model.gpt2 import (
    GPT2EvalLoss,
    GPT2LastLogits,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2WithCache,
    GPT2WithLoss,
    num_parameters,
)
from mftasks.model.lora import (
    LoraConfig,
    LoRADense,
    apply_lora,
    lora_filter,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora_state,
    merge_lora_weights,
)

__all__ = [
    "PRESETS", "VALID_LORA_TARGETS", "GPT2Config",
    "GPT2LMHeadModel", "GPT2Model", "GPT2WithLoss", "GPT2EvalLoss", "GPT2WithCache", "GPT2LastLogits",
    "num_parameters",
    "LoraConfig", "LoRADense", "apply_lora", "mark_only_lora_as_trainable", "lora_filter", "lora_state_dict",
    "merge_lora_weights", "merge_lora_state",
    "KVCache", "CachedDecoder", "RecomputeDecoder", "apply_repetition_penalty", "sample", "next_token",
    "generate",
]
