"""mftasks: MindFormers-style GPT-2 training, LoRA finetuning, evaluation and prediction on MindSpore.

`from mftasks import Trainer, TrainingArguments` works like `from mindformers import ...`.  Heavy
modules (MindSpore) load on first use, so the command line and data tools start fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Trainer": "mftasks.trainer",
    "TrainingArguments": "mftasks.training_args",
    "init_context": "mftasks.context",
    "ContextConfig": "mftasks.context",
    "ParallelContextConfig": "mftasks.context",
    "GPT2Config": "mftasks.model",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mftasks' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
