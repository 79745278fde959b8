"""The tiny GPT-2 the model-level tests share (2 layers, width 64), and MindSpore's execution mode for a test."""
from __future__ import annotations

from contextlib import contextmanager

import mindspore as ms

from mftasks.model import GPT2Config


def tiny_config(**overrides) -> GPT2Config:
    """2 layers, width 64, 2 heads, context 32, vocabulary 100, no dropout; `overrides` change any field."""
    fields = dict(n_layer=2, n_embd=64, n_head=2, seq_length=32, vocab_size=100, dropout=0.0, attention_dropout=0.0)
    return GPT2Config(**{**fields, **overrides})


@contextmanager
def mindspore_mode(mode: int):
    """Run the block in `mode` (ms.GRAPH_MODE or ms.PYNATIVE_MODE), then restore the mode it found."""
    old = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=old)
