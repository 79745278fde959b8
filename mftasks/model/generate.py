"""Text generation over an explicit, fixed-shape KV cache (litgpt style): sample -> next_token -> generate.

The network runs through two top-level cells with fixed input shapes, so GRAPH mode compiles the prefill
once per (batch, longest prompt) and the one-token decode step once per batch size, not once per token:
- prefill: the prompts right-padded to (B, P); row b writes its keys/values to cache slots 0..P-1 and the
  logits of its last real token are read at index len_b - 1;
- decode: (B, 1) tokens, row b writes at its own slot `input_pos[b]` = its current length, attending to
  slots <= input_pos[b].  Padding slots of a shorter row are overwritten before it can ever attend to
  them, so no pad mask is needed and a prompt batched with longer ones gives the same tokens as alone.

The cache is preallocated as (n_layer, B, n_head, seq_length, head_dim) (n_head / mp under tensor
parallelism: every rank of the mp group calls `generate` with the same prompts and gets the same tokens;
CPU-tested with mp2).  Sampling (repetition penalty, temperature, top-k, top-p) runs in numpy on the host
with `np.random.default_rng(seed)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import mindspore as ms
import numpy as np
from mindspore import nn

from mftasks.errors import ConfigError
from mftasks.model.gpt2 import GPT2LastLogits, GPT2LMHeadModel, GPT2WithCache


# ----------------------------------------------------------------------------------------------- sampling
def apply_repetition_penalty(logits: np.ndarray, history: list[list[int]], penalty: float) -> np.ndarray:
    """CTRL-style penalty on a copy of logits (B, V): for tokens in history[b], positive logits are divided by
    `penalty` and negative ones multiplied by it (penalty > 1 makes repeats less likely)."""
    logits = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0:
        return logits
    for b, seen in enumerate(history):
        idx = np.unique(np.asarray(seen, dtype=np.int64))
        if idx.size:
            row = logits[b, idx]
            logits[b, idx] = np.where(row > 0, row / penalty, row * penalty)
    return logits


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> np.ndarray:
    """Draw one token per row of logits (B, V) -> (B,) int64.

    temperature scales the logits; top_k > 0 keeps the k most likely tokens (ties with the k-th are kept);
    top_p < 1 keeps the smallest set of most likely tokens whose probability reaches top_p (nucleus; the
    most likely one always stays).
    """
    logits = np.asarray(logits, dtype=np.float64) / temperature
    B, V = logits.shape
    if 0 < top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k : V - top_k + 1]  # (B, 1) k-th largest
        logits = np.where(logits < kth, -np.inf, logits)
    probs = _softmax(logits)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p  # mass before the token already >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(V, p=p) for p in probs], dtype=np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def next_token(logits: np.ndarray, history: list[list[int]], rng: np.random.Generator, *, do_sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               repetition_penalty: float = 1.0) -> np.ndarray:
    """The next token of each row (B,): repetition penalty over history[b], then argmax or `sample`."""
    logits = apply_repetition_penalty(logits, history, repetition_penalty)
    if not do_sample:
        return np.argmax(logits, axis=-1).astype(np.int64)
    return sample(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)


# --------------------------------------------------------------------------------------------- the network
@dataclass
class KVCache:
    """Keys and values of every layer, (n_layer, B, n_head, max_len, head_dim) each."""

    k: ms.Tensor
    v: ms.Tensor

    @classmethod
    def empty(cls, model: GPT2LMHeadModel, batch_size: int) -> KVCache:
        c = model.config
        mp = model.parallel.mp_size if getattr(model, "parallel", None) is not None else 1
        shape = (c.n_layer, batch_size, c.n_head // mp, c.seq_length, c.head_dim)  # this rank's heads
        return cls(ms.Tensor(np.zeros(shape, np.float32)), ms.Tensor(np.zeros(shape, np.float32)))


class Decoder(Protocol):
    """How `generate` gets logits: prefill the prompts, then feed one token per row."""

    def prefill(self, prompts: list[list[int]]) -> np.ndarray: ...  # logits (B, V) after each prompt

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray: ...  # tokens[b] at positions[b]


class CachedDecoder:
    """Prefill once, then one-token steps against the fixed-shape KV cache."""

    def __init__(self, model: GPT2LMHeadModel, pad_id: int):
        self.cell = _top_cell(model, GPT2WithCache)
        self.model, self.pad_id = model, pad_id

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        self.cache = KVCache.empty(self.model, len(prompts))
        ids, lengths = _right_pad(prompts, max(map(len, prompts)), self.pad_id)
        start = np.zeros(len(prompts), np.int32)
        return self._run(ids, start, lengths - 1)

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        ids = tokens.astype(np.int32).reshape(-1, 1)
        return self._run(ids, positions.astype(np.int32), np.zeros(len(tokens), np.int32))

    def _run(self, ids: np.ndarray, input_pos: np.ndarray, logits_idx: np.ndarray) -> np.ndarray:
        logits, k, v = self.cell(ms.Tensor(ids), ms.Tensor(input_pos), ms.Tensor(logits_idx), self.cache.k,
                                 self.cache.v)
        self.cache = KVCache(k, v)
        return logits.asnumpy()


class RecomputeDecoder:
    """No cache: every step reruns the whole fixed-length (B, seq_length) sequence (the baseline)."""

    def __init__(self, model: GPT2LMHeadModel, pad_id: int):
        self.cell = _top_cell(model, GPT2LastLogits)
        self.max_len, self.pad_id = model.config.seq_length, pad_id

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        self.ids, lengths = _right_pad(prompts, self.max_len, self.pad_id)
        return self._run(lengths - 1)

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        self.ids[np.arange(len(tokens)), positions] = tokens
        return self._run(positions.astype(np.int32))

    def _run(self, logits_idx: np.ndarray) -> np.ndarray:
        return self.cell(ms.Tensor(self.ids), ms.Tensor(logits_idx)).asnumpy()


def _right_pad(prompts: list[list[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(prompts), width), pad_id, dtype=np.int32)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = p
    return ids, np.array([len(p) for p in prompts], dtype=np.int32)


# One wrapper cell per (model, kind), kept on the model (outside MindSpore's cell tree) and rebuilt when the
# model's LoRA layers change (added or merged): GRAPH mode reuses compiled graphs across generate() calls but
# never runs one compiled before a merge.
def _top_cell(model: GPT2LMHeadModel, kind: type[nn.Cell]) -> nn.Cell:
    signature = tuple((name, getattr(c, "merged", None)) for name, c in model.cells_and_names())
    cells = model.__dict__.get("_generate_cells")
    if cells is None:
        cells = {}
        object.__setattr__(model, "_generate_cells", cells)  # not Cell.__setattr__: no child cell registered
    if kind not in cells or cells[kind][0] != signature:
        cells[kind] = (signature, kind(model))
    return cells[kind][1]


# ------------------------------------------------------------------------------------------------ generate
def generate(model: GPT2LMHeadModel, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None,
             pad_id: int = 0, do_sample: bool = False, top_k: int = 0, top_p: float = 1.0,
             temperature: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0,
             use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt; returns only the new tokens of each row.

    A row stops at `eos_id` (not included in its output), after `max_new_tokens`, or when its context is
    full: prompt plus new tokens never exceed `config.seq_length`, so a row gets at most
    seq_length - len(prompt) new tokens.  Greedy (argmax) unless do_sample; the repetition penalty applies
    to both and counts the prompt's tokens as seen.  use_cache=False recomputes the whole fixed-length
    sequence at every step (same tokens, much slower; kept as the reference and benchmark baseline).
    The model runs with dropout off; its training flag is restored afterwards.
    """
    _validate(model, prompts, max_new_tokens, eos_id, pad_id, do_sample, top_k, top_p, temperature,
              repetition_penalty)
    max_len = model.config.seq_length
    history = [list(map(int, p)) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    active = [len(p) < max_len for p in history] if max_new_tokens > 0 else [False] * len(prompts)
    if not any(active):
        return new
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.set_train(False)
    try:
        decoder: Decoder = (CachedDecoder if use_cache else RecomputeDecoder)(model, pad_id)
        logits = decoder.prefill(history)
        while True:
            tokens = next_token(logits, history, rng, do_sample=do_sample, temperature=temperature, top_k=top_k,
                                top_p=top_p, repetition_penalty=repetition_penalty)
            for b, tok in enumerate(tokens.tolist()):
                if not active[b]:
                    continue
                if tok == eos_id:
                    active[b] = False
                    continue
                new[b].append(tok)
                history[b].append(tok)
                if len(new[b]) >= max_new_tokens or len(history[b]) >= max_len:
                    active[b] = False
            if not any(active):
                return new
            # Feed each row's last token at its own position; finished rows feed padding (ignored).
            feed = np.array([h[-1] if a else pad_id for h, a in zip(history, active)], dtype=np.int32)
            positions = np.array([min(len(h) - 1, max_len - 1) for h in history], dtype=np.int32)
            logits = decoder.step(feed, positions)
    finally:
        model.set_train(was_training)


def _validate(model, prompts, max_new_tokens, eos_id, pad_id, do_sample, top_k, top_p, temperature,
              repetition_penalty) -> None:
    cfg = model.config
    problems = []
    split = getattr(model, "parallel", None)
    if split is not None and split.layout.pipeline_stage > 1:
        problems.append(f"pipeline_stage={split.layout.pipeline_stage}: generation with a pipeline-parallel model is "
                        "not implemented (each rank holds only its stage); predict with pipeline_stage: 1 (model "
                        "parallel works: every rank of the mp group calls generate with the same prompts), or merge "
                        "the ranks' parameters (mftasks.parallel.shards.merge_rank_states) and generate on one")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        problems.append("prompts must be a non-empty list of token-id lists")
    else:
        for i, p in enumerate(prompts):
            if len(p) == 0:
                problems.append(f"prompts[{i}] is empty: every prompt needs at least one token")
            elif len(p) > cfg.seq_length:
                problems.append(f"prompts[{i}] has {len(p)} tokens, more than seq_length={cfg.seq_length}: "
                                "truncate it (e.g. keep the last seq_length tokens)")
            elif min(p) < 0 or max(p) >= cfg.vocab_size:
                problems.append(f"prompts[{i}] has token ids outside [0, {cfg.vocab_size})")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        problems.append(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and not 0 <= value < cfg.vocab_size:
            problems.append(f"{name}={value} is outside the vocabulary [0, {cfg.vocab_size})")
    if pad_id is None:
        problems.append("pad_id must be a token id (it fills unused positions; its value does not matter)")
    if do_sample and not temperature > 0:
        problems.append(f"temperature={temperature} must be > 0 when sampling")
    if not isinstance(top_k, int) or top_k < 0:
        problems.append(f"top_k={top_k!r} must be an integer >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        problems.append(f"top_p={top_p} must be in (0, 1] (1 = off)")
    if not repetition_penalty > 0:
        problems.append(f"repetition_penalty={repetition_penalty} must be > 0 (1 = off)")
    ConfigError.raise_if(problems, where="generate")
