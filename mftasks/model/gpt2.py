"""GPT-2 in MindSpore, nanoGPT style: learned positions, pre-LayerNorm blocks, GELU MLP, tied embeddings.

Parameter names follow the reference checkpoints (`transformer.wte.embedding_table`,
`transformer.h.0.attn.c_attn.weight`, ..., `transformer.ln_f.gamma`), so converting a Hugging Face or
MindFormers GPT-2 is a table of names plus shape checks.  Dense weights are stored (out, in).

Shapes: B batch, T tokens, C = n_embd, nh = n_head, hs = head_dim, V = vocab_size, L = cache length.

Two forwards share the same blocks:
- `construct(input_ids)`: the usual causal forward, positions 0..T-1, logits (B, T, V).
- `forward_with_cache(...)`: writes the new keys/values into a fixed-shape cache at `input_pos` and
  attends over the whole cache (used by `mftasks.model.generate`).

The wrapper cells (`GPT2WithLoss`, `GPT2EvalLoss`, `GPT2WithCache`) use `auto_prefix=False` so that the
parameter names stay those of the bare model.  In GRAPH mode a top-level cell keeps the graph it compiled
first (per input shape): Python attributes changed afterwards (e.g. a LoRA `merged` flag) only take effect
in cells built after the change.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from mftasks.model.config import GPT2Config

_MASKED = -1e9  # added to attention scores of masked keys (finite: a fully masked row gives no NaN)


class CausalSelfAttention(nn.Cell):
    def __init__(self, config: GPT2Config):
        super().__init__()
        C, std = config.n_embd, config.initializer_range
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.c_attn = nn.Dense(C, 3 * C, weight_init=Normal(std), bias_init="zeros")  # fused q, k, v
        self.c_proj = nn.Dense(C, C, weight_init=Normal(std / math.sqrt(2 * config.n_layer)), bias_init="zeros")
        self.attn_dropout = nn.Dropout(p=config.attention_dropout)
        self.resid_dropout = nn.Dropout(p=config.dropout)

    def _qkv(self, x):
        B, T, C = x.shape
        q, k, v = ops.split(self.c_attn(x), C, axis=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)
        return q, k, v

    def _attend(self, q, k, v, mask_bias):
        # q (B, nh, T, hs); k, v (B, nh, S, hs); mask_bias (0 or _MASKED) broadcastable to (B, nh, T, S)
        B, _, T, _ = q.shape
        att = ops.matmul(q, k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, S)
        att = self.attn_dropout(ops.softmax(att + mask_bias, axis=-1))
        y = ops.matmul(att, v)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def construct(self, x, mask_bias):
        q, k, v = self._qkv(x)
        return self._attend(q, k, v, mask_bias)

    def forward_with_cache(self, x, mask_bias, k_cache, v_cache, write_index, written):
        # k_cache, v_cache (B, nh, L, hs); write_index (B, L) int32: which of the T new entries lands in
        # each slot; written (B, 1, L, 1) bool: which slots get a new entry.
        q, k, v = self._qkv(x)
        k_cache = _write(k_cache, k, write_index, written)
        v_cache = _write(v_cache, v, write_index, written)
        return self._attend(q, k_cache, v_cache, mask_bias), k_cache, v_cache


def _write(cache, new, write_index, written):
    """The cache with `new` (B, nh, T, hs) written at the slots marked in `written`."""
    if new.shape[2] == 1:  # decode step: one slot per row, broadcast instead of gather
        return ops.where(written, new, cache)
    placed = ops.gather(new.transpose(0, 2, 1, 3), write_index, axis=1, batch_dims=1)  # (B, L, nh, hs)
    return ops.where(written, placed.transpose(0, 2, 1, 3), cache)  # (B, nh, L, hs)


class MLP(nn.Cell):
    def __init__(self, config: GPT2Config):
        super().__init__()
        C, std = config.n_embd, config.initializer_range
        self.c_fc = nn.Dense(C, 4 * C, weight_init=Normal(std), bias_init="zeros")
        self.gelu = nn.GELU(approximate=True)  # GPT-2's tanh approximation
        self.c_proj = nn.Dense(4 * C, C, weight_init=Normal(std / math.sqrt(2 * config.n_layer)), bias_init="zeros")
        self.dropout = nn.Dropout(p=config.dropout)

    def construct(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Cell):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm((config.n_embd,), epsilon=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm((config.n_embd,), epsilon=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def construct(self, x, mask_bias):
        x = x + self.attn(self.ln_1(x), mask_bias)
        x = x + self.mlp(self.ln_2(x))
        return x

    def forward_with_cache(self, x, mask_bias, k_cache, v_cache, write_index, written):
        a, k_cache, v_cache = self.attn.forward_with_cache(self.ln_1(x), mask_bias, k_cache, v_cache, write_index,
                                                           written)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k_cache, v_cache


class GPT2Model(nn.Cell):
    """The decoder stack: embeddings, blocks, final LayerNorm (held as `transformer`)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        std = config.initializer_range
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, embedding_table=Normal(std))
        self.wpe = nn.Embedding(config.seq_length, config.n_embd, embedding_table=Normal(std))
        self.drop = nn.Dropout(p=config.dropout)
        self.h = nn.CellList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm((config.n_embd,), epsilon=config.layer_norm_epsilon)

    def construct(self, input_ids):
        T = input_ids.shape[1]
        pos = ops.arange(T, dtype=ms.int32)  # (T,)
        mask_bias = _mask_bias(pos.reshape(1, 1, 1, T) <= pos.reshape(1, 1, T, 1))  # (1, 1, T, T) causal
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        for block in self.h:
            x = block(x, mask_bias)
        return x  # (B, T, C), before ln_f

    def forward_with_cache(self, input_ids, input_pos, k_cache, v_cache):
        # input_ids (B, T) int32 sit at positions input_pos[b] + t; input_pos (B,) int32;
        # k_cache, v_cache (n_layer, B, nh, L, hs).
        B, T = input_ids.shape
        L = k_cache.shape[3]
        pos = input_pos.reshape(B, 1) + ops.arange(T, dtype=ms.int32).reshape(1, T)  # (B, T)
        slots = ops.arange(L, dtype=ms.int32)  # (L,)
        mask_bias = _mask_bias(slots.reshape(1, 1, 1, L) <= pos.reshape(B, 1, T, 1))  # (B, 1, T, L)
        rel = slots.reshape(1, L) - input_pos.reshape(B, 1)  # (B, L): index of the new entry per slot
        written = ops.logical_and(rel >= 0, rel < T).reshape(B, 1, L, 1)
        write_index = ops.clip(rel, 0, T - 1)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        k_layers, v_layers = ops.unstack(k_cache, axis=0), ops.unstack(v_cache, axis=0)  # (much faster on CPU
        new_k, new_v = [], []                                                            # than k_cache[i])
        for i, block in enumerate(self.h):
            x, k, v = block.forward_with_cache(x, mask_bias, k_layers[i], v_layers[i], write_index, written)
            new_k.append(k)
            new_v.append(v)
        return x, ops.stack(new_k), ops.stack(new_v)  # (B, T, C), 2 x (n_layer, B, nh, L, hs)


class GPT2LMHeadModel(nn.Cell):
    """GPT-2 with the language-model head tied to the token embedding."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head_matmul = ops.MatMul(transpose_b=True)  # tied head: no parameter of its own

    def _logits(self, x):
        x = self.transformer.ln_f(x)  # (..., C)
        lead = x.shape[:-1]
        # x @ wte^T without materialising the (C, V) transpose: (N, C) x (V, C)^T -> (N, V)
        logits = self.lm_head_matmul(x.reshape(-1, x.shape[-1]), self.transformer.wte.embedding_table)
        return logits.reshape(lead + (-1,))  # (..., V)

    def construct(self, input_ids, logits_idx=None):
        """input_ids (B, T) int32 -> logits (B, T, V) float32; with logits_idx (B,) only (B, V) at those."""
        x = self.transformer(input_ids)  # (B, T, C)
        if logits_idx is not None:
            x = _pick(x, logits_idx)  # (B, C)
        return self._logits(x)

    def forward_with_cache(self, input_ids, input_pos, logits_idx, k_cache, v_cache):
        """Logits (B, V) at input_ids[b, logits_idx[b]], and the caches with the new keys/values written."""
        x, k_cache, v_cache = self.transformer.forward_with_cache(input_ids, input_pos, k_cache, v_cache)
        return self._logits(_pick(x, logits_idx)), k_cache, v_cache


def _mask_bias(allowed):
    """0.0 where attention is allowed, _MASKED elsewhere (added to the scores before softmax)."""
    return (1.0 - allowed.astype(ms.float32)) * _MASKED


def _pick(x, idx):
    """x (B, T, C), idx (B,) int32 -> (B, C) with row b = x[b, idx[b]]."""
    B = x.shape[0]
    return ops.gather(x, idx.reshape(B, 1), axis=1, batch_dims=1).reshape(B, x.shape[2])


def _token_losses(model, input_ids, attention_mask):
    """Per-token cross-entropy and label mask, both (B, T), for samples of T + 1 tokens."""
    tokens, labels = input_ids[:, :-1], input_ids[:, 1:]  # (B, T) each
    mask = attention_mask[:, 1:].astype(ms.float32)  # (B, T), 1 = real label
    logits = model(tokens)  # (B, T, V)
    B, T, V = logits.shape
    nll = ops.cross_entropy(logits.reshape(B * T, V), labels.reshape(B * T), reduction="none")
    return nll.reshape(B, T), mask


class GPT2WithLoss(nn.Cell):
    """(input_ids, attention_mask), both int32 (B, T + 1) -> mean cross-entropy over the real labels.

    MindFormers convention: inputs are input_ids[:, :-1], labels input_ids[:, 1:], and the label mask is
    attention_mask[:, 1:] (1 = real token, 0 = padding).  Wrap in nn.TrainOneStepCell to train.
    """

    def __init__(self, model: GPT2LMHeadModel):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, attention_mask):
        nll, mask = _token_losses(self.model, input_ids, attention_mask)
        return (nll * mask).sum() / ops.maximum(mask.sum(), 1.0)


class GPT2EvalLoss(nn.Cell):
    """Like GPT2WithLoss but returns (sum of token losses, number of tokens), for token-weighted means."""

    def __init__(self, model: GPT2LMHeadModel):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, attention_mask):
        nll, mask = _token_losses(self.model, input_ids, attention_mask)
        return (nll * mask).sum(), mask.sum()


class GPT2WithCache(nn.Cell):
    """Top-level cell for cached generation: compiles once per input shape in GRAPH mode.

    (input_ids (B, T), input_pos (B,), logits_idx (B,), k_cache, v_cache) -> (logits (B, V), k_cache, v_cache)
    """

    def __init__(self, model: GPT2LMHeadModel):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, input_pos, logits_idx, k_cache, v_cache):
        return self.model.forward_with_cache(input_ids, input_pos, logits_idx, k_cache, v_cache)


class GPT2LastLogits(nn.Cell):
    """Top-level cell for generation without a cache: (input_ids (B, T), logits_idx (B,)) -> logits (B, V)."""

    def __init__(self, model: GPT2LMHeadModel):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, logits_idx):
        return self.model(input_ids, logits_idx)


def num_parameters(model: nn.Cell, trainable_only: bool = False) -> int:
    """Number of scalar parameters (each tied parameter counted once)."""
    params = model.trainable_params() if trainable_only else model.get_parameters()
    return int(sum(np.prod(p.shape) for p in params))
