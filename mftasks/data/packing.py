"""Tokenize documents (in N processes), split train/eval by document, pack into fixed-size samples.

Packing follows MindFormers: each document's tokens + EOS are concatenated into one stream, cut into
samples of `seq_length + 1` tokens (the label shift takes one), and the incomplete tail is dropped.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import sys
from dataclasses import dataclass

import numpy as np

from . import tokenizer as tok

CHUNK_DOCS = 512  # documents per unit of work; fixed, so output never depends on the worker count


@dataclass
class PackedSplit:
    """One split's samples, shape (n, seq_length + 1), int32."""

    samples: np.ndarray
    documents: int
    tokens: int  # tokens in the stream before packing (EOS included)

    @property
    def dropped_tokens(self) -> int:
        return self.tokens - int(self.samples.size)


def tokenize(documents: list[str], model_proto: bytes, workers: int) -> list[np.ndarray]:
    """Token ids of every document, in order; byte-identical for any number of workers."""
    chunks = [documents[i:i + CHUNK_DOCS] for i in range(0, len(documents), CHUNK_DOCS)]
    if workers <= 1 or len(chunks) <= 1:
        _init_worker(model_proto)
        encoded = [_encode_chunk(c) for c in chunks]
    else:
        ctx = mp.get_context(_start_method())
        with ctx.Pool(processes=min(workers, len(chunks)), initializer=_init_worker,
                      initargs=(model_proto,)) as pool:
            encoded = pool.map(_encode_chunk, chunks, chunksize=1)
    out: list[np.ndarray] = []
    for flat, lengths in encoded:
        out.extend(np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else [])
    return out


_SP = None


def _start_method() -> str:
    """fork is fast, but never fork a process that has MindSpore's threads running: spawn then."""
    return "spawn" if "mindspore" in sys.modules else "fork"


def _init_worker(model_proto: bytes) -> None:
    global _SP
    _SP = tok.load(model_proto)


def _encode_chunk(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = _SP.encode(docs, num_threads=1)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def split_documents(n_docs: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and eval documents (each in corpus order); eval is a seeded random subset."""
    n_eval = int(round(n_docs * eval_fraction))
    if eval_fraction > 0 and n_docs >= 2:
        n_eval = min(max(n_eval, 1), n_docs - 1)
    chosen = np.random.default_rng(seed).permutation(n_docs)[:n_eval]
    is_eval = np.zeros(n_docs, dtype=bool)
    is_eval[chosen] = True
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def pack(token_docs: list[np.ndarray], indices: np.ndarray, seq_length: int, eos_id: int) -> PackedSplit:
    """Concatenate the chosen documents (+EOS each) and cut samples of seq_length + 1 tokens."""
    width = seq_length + 1
    pieces = []
    eos = np.array([eos_id], dtype=np.int32)
    for i in indices:
        pieces.append(token_docs[i])
        pieces.append(eos)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    n = len(stream) // width
    return PackedSplit(samples=stream[: n * width].reshape(n, width), documents=len(indices),
                       tokens=int(len(stream)))
