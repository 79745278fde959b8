"""GPT-2 in MindSpore, nanoGPT style: learned positions, pre-LayerNorm blocks, GELU MLP, tied embeddings.

Parameter names follow the reference checkpoints (`transformer.wte.embedding_table`,
`transformer.h.0.attn.c_attn.weight`, ..., `transformer.ln_f.gamma`), so converting a Hugging Face or
MindFormers GPT-2 is a table of names plus shape checks.  Dense weights are stored (out, in).

Shapes: B batch, T tokens, C = n_embd, nh = n_head, hs = head_dim, V = vocab_size, L = cache length.

Tensor and pipeline parallelism (`mftasks.parallel`): given a `ParallelState` (layout + this rank's place),
the same classes build one rank's part: n_head / mp heads per rank with column-parallel `c_attn`/`c_fc` and
row-parallel `c_proj`, a vocabulary-parallel `wte` unless vocab_emb_dp, and on a pipeline stage only its
blocks (named by their global index), the embeddings on the first stage and ln_f + the tied head on the
last (which holds its own copy of `wte`).  Without a state (the default) nothing changes.

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
from typing import TYPE_CHECKING

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from mftasks.model.config import GPT2Config

if TYPE_CHECKING:
    from mftasks.parallel.groups import ParallelState

_MASKED = -1e9  # added to attention scores of masked keys (finite: a fully masked row gives no NaN)


def _linear(kind: str, n_in: int, n_out: int, std: float, parallel: ParallelState | None) -> nn.Cell:
    """nn.Dense, or its column / row-parallel form when the model is split over an mp group."""
    if parallel is None or parallel.mp_size == 1:
        return nn.Dense(n_in, n_out, weight_init=Normal(std), bias_init="zeros")
    from mftasks.parallel.layers import ColumnParallelLinear, RowParallelLinear

    cls = ColumnParallelLinear if kind == "column" else RowParallelLinear
    return cls(n_in, n_out, mp_size=parallel.mp_size, group=parallel.tp_group, weight_init=Normal(std))


class CausalSelfAttention(nn.Cell):
    def __init__(self, config: GPT2Config, parallel: ParallelState | None = None):
        super().__init__()
        C, std = config.n_embd, config.initializer_range
        mp = parallel.mp_size if parallel is not None else 1
        self.n_head, self.head_dim = config.n_head // mp, config.head_dim  # this rank's heads
        self.c_attn = _linear("column", C, 3 * C, std, parallel)  # fused q, k, v (per rank: its heads' q, k, v)
        self.c_proj = _linear("row", C, C, std / math.sqrt(2 * config.n_layer), parallel)
        self.attn_dropout = nn.Dropout(p=config.attention_dropout)
        self.resid_dropout = nn.Dropout(p=config.dropout)

    def _qkv(self, x):
        B, T, _ = x.shape
        q, k, v = ops.split(self.c_attn(x), self.n_head * self.head_dim, axis=2)  # 3 x (B, T, C) (C / mp per rank)
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
    def __init__(self, config: GPT2Config, parallel: ParallelState | None = None):
        super().__init__()
        C, std = config.n_embd, config.initializer_range
        self.c_fc = _linear("column", C, 4 * C, std, parallel)
        self.gelu = nn.GELU(approximate=True)  # GPT-2's tanh approximation
        self.c_proj = _linear("row", 4 * C, C, std / math.sqrt(2 * config.n_layer), parallel)
        self.dropout = nn.Dropout(p=config.dropout)

    def construct(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Cell):
    def __init__(self, config: GPT2Config, parallel: ParallelState | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm((config.n_embd,), epsilon=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, parallel)
        self.ln_2 = nn.LayerNorm((config.n_embd,), epsilon=config.layer_norm_epsilon)
        self.mlp = MLP(config, parallel)

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
    """The decoder stack: embeddings, blocks, final LayerNorm (held as `transformer`).

    With `parallel`, one rank's part: the first stage holds wte, wpe; the last ln_f and (for the tied head)
    its own wte; every stage its blocks, named transformer.h.<global index>."""

    def __init__(self, config: GPT2Config, parallel: ParallelState | None = None):
        super().__init__()
        std = config.initializer_range
        layers, first, last = range(config.n_layer), True, True
        if parallel is not None:
            from mftasks.parallel.layout import stage_layers

            layers = stage_layers(parallel.layout, config.n_layer, parallel.place.stage)
            first, last = parallel.place.is_first_stage, parallel.place.is_last_stage
        if first or last:
            self.wte = _word_embedding(config, parallel)
        if first:
            self.wpe = nn.Embedding(config.seq_length, config.n_embd, embedding_table=Normal(std))
            self.drop = nn.Dropout(p=config.dropout)
        self.h = nn.CellList([Block(config, parallel) for _ in layers]) if not layers.start else \
            _StageBlocks([Block(config, parallel) for _ in layers], layers.start)
        if last:
            self.ln_f = nn.LayerNorm((config.n_embd,), epsilon=config.layer_norm_epsilon)

    def construct(self, input_ids):
        return self.blocks(self.embed(input_ids))  # (B, T, C), before ln_f

    def embed(self, input_ids):
        """input_ids (B, T) int32 -> token + position embeddings (B, T, C) (first stage)."""
        pos = ops.arange(input_ids.shape[1], dtype=ms.int32)  # (T,)
        return self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)

    def blocks(self, x):
        """This model's (or stage's) blocks over x (B, T, C), causal."""
        T = x.shape[1]
        pos = ops.arange(T, dtype=ms.int32)
        mask_bias = _mask_bias(pos.reshape(1, 1, 1, T) <= pos.reshape(1, 1, T, 1))  # (1, 1, T, T) causal
        for block in self.h:
            x = block(x, mask_bias)
        return x

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


class _StageBlocks(nn.CellList):
    """The blocks of a later pipeline stage, keyed by their global index (so stage 1 of 2 over 4 layers holds
    transformer.h.2 and transformer.h.3); indexing stays local (self.h[0] is its first block)."""

    def __init__(self, blocks: list[nn.Cell], first: int):
        super().__init__(blocks)
        self.first = first
        self._cells = type(self._cells)((str(first + i), b) for i, b in enumerate(self._cells.values()))
        self.update_parameters_name()

    def __getitem__(self, index):
        if isinstance(index, int):
            return list(self._cells.values())[index]
        return super().__getitem__(index)


def _word_embedding(config: GPT2Config, parallel: ParallelState | None) -> nn.Cell:
    std = config.initializer_range
    if parallel is not None and parallel.vocab_parallel:
        from mftasks.parallel.layers import VocabParallelEmbedding

        return VocabParallelEmbedding(config.vocab_size, config.n_embd, mp_rank=parallel.mp_rank,
                                      mp_size=parallel.mp_size, group=parallel.tp_group, embedding_table=Normal(std))
    return nn.Embedding(config.vocab_size, config.n_embd, embedding_table=Normal(std))


class GPT2LMHeadModel(nn.Cell):
    """GPT-2 with the language-model head tied to the token embedding.

    `parallel` (mftasks.parallel.groups.ParallelState): build only this rank's part (see GPT2Model); with a
    vocabulary-parallel wte the head gives this rank's logit columns (B, T, V / mp) and `token_nll` uses
    the vocabulary-parallel cross-entropy."""

    def __init__(self, config: GPT2Config, parallel: ParallelState | None = None):
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.transformer = GPT2Model(config, parallel)
        self.lm_head_matmul = ops.MatMul(transpose_b=True)  # tied head: no parameter of its own
        self.vocab_ce = None
        if parallel is not None and parallel.vocab_parallel and parallel.place.is_last_stage:
            from mftasks.parallel.layers import VocabParallelCrossEntropy
            from mftasks.parallel.mappings import copy_to_model_parallel_region, gather_from_model_parallel_region

            self.head_copy = copy_to_model_parallel_region(parallel.tp_group)
            self.vocab_ce = VocabParallelCrossEntropy(self.transformer.wte.vocab_start, parallel.mp_size,
                                                      parallel.tp_group)
            # construct / forward_with_cache return whole rows of logits (generation, logits-based eval)
            self.gather_logits = gather_from_model_parallel_region(parallel.tp_group, parallel.mp_rank,
                                                                   parallel.mp_size)

    def _logits(self, x):
        x = self.transformer.ln_f(x)  # (..., C)
        if self.vocab_ce is not None:
            x = self.head_copy(x)  # each rank's head sees all of x; its gradient is summed over the mp group
        lead = x.shape[:-1]
        # x @ wte^T without materialising the (C, V) transpose: (N, C) x (V, C)^T -> (N, V)
        logits = self.lm_head_matmul(x.reshape(-1, x.shape[-1]), self.transformer.wte.embedding_table)
        return logits.reshape(lead + (-1,))  # (..., V)  (V / mp per rank when the vocabulary is split)

    def token_nll(self, x, labels):
        """Cross-entropy (B, T) of labels (B, T) under the head applied to hidden states x (B, T, C)."""
        logits = self._logits(x)  # (B, T, V)
        B, T, V = logits.shape
        if self.vocab_ce is not None:
            nll = self.vocab_ce(logits.reshape(B * T, V), labels.reshape(B * T))
        else:
            nll = ops.cross_entropy(logits.reshape(B * T, V), labels.reshape(B * T), reduction="none")
        return nll.reshape(B, T)

    def construct(self, input_ids, logits_idx=None):
        """input_ids (B, T) int32 -> logits (B, T, V) float32; with logits_idx (B,) only (B, V) at those."""
        x = self.transformer(input_ids)  # (B, T, C)
        if logits_idx is not None:
            x = _pick(x, logits_idx)  # (B, C)
        return self._full_logits(x)

    def forward_with_cache(self, input_ids, input_pos, logits_idx, k_cache, v_cache):
        """Logits (B, V) at input_ids[b, logits_idx[b]], and the caches with the new keys/values written.
        Tensor parallel: the caches hold this rank's heads, (n_layer, B, n_head / mp, L, hs)."""
        x, k_cache, v_cache = self.transformer.forward_with_cache(input_ids, input_pos, k_cache, v_cache)
        return self._full_logits(_pick(x, logits_idx)), k_cache, v_cache

    def _full_logits(self, x):
        logits = self._logits(x)
        return logits if self.vocab_ce is None else self.gather_logits(logits)  # (..., V) on every rank


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
    return model.token_nll(model.transformer(tokens), labels), mask


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
