"""Evaluate and predict with a network whose weights are loaded (the Trainer's `evaluate` and `predict`).

    eval_loss(net, folder, batch_size, info)      token-weighted loss and PPL over a dataset's eval split
    texts_of(input_data)                          predict's input as a list of strings, or ConfigError
    continue_texts(net, sp, texts, ...)           [{'text_generation_text': [prompt + continuation]}, ...]
    write_results(output_dir, results)            MindFormers' text_generation_result.txt, one result a line
    result_file_problems(output_dir)              why that file may not be replaced (it is not a predict's)
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from . import data as datasets
from . import weights
from .distributed import all_reduce_sum, rank_and_world
from .errors import ConfigError
from .files import atomic_write_bytes

DEFAULT_MAX_NEW_TOKENS = 32
RESULT_FILE = "text_generation_result.txt"
"""What predict writes under output_dir: MindFormers' file name and format (`str(result)` a line)."""


def eval_loss(net, folder: str, batch_size: int, info) -> dict:
    """{'loss', 'PPL'} over the whole eval split of dataset `folder` (checked to fit the net and checkpoint
    `info`), as a token-weighted mean: loss = sum of token losses / number of tokens, PPL = exp(loss)."""
    from .model import GPT2EvalLoss

    manifest = datasets.read_manifest(folder)
    weights.check_compatible(net.config, manifest, folder, info)
    rank, world = rank_and_world()
    was_training = net.training
    net.set_train(False)
    cell = GPT2EvalLoss(net)
    cell.set_train(False)
    total_loss, total_tokens = 0.0, 0.0
    n = manifest["splits"]["eval"]["samples"]
    try:
        data = datasets.load(folder, min(batch_size, max(n // world, 1)), shuffle=False, rank=rank,
                             world_size=world, split="eval", drop_remainder=False)
        for ids, mask in data.create_tuple_iterator(num_epochs=1):
            s, c = cell(ids, mask)
            total_loss += float(s.asnumpy())
            total_tokens += float(c.asnumpy())
    finally:
        net.set_train(was_training)
    if world > 1:
        total_loss, total_tokens = all_reduce_sum([total_loss, total_tokens])
    loss = total_loss / max(total_tokens, 1.0)
    logging.getLogger("mftasks").info("evaluate: %d tokens, loss %.4f, PPL %.3f", int(total_tokens), loss,
                                      math.exp(min(loss, 700)))
    return {"loss": loss, "PPL": math.exp(min(loss, 700))}


def texts_of(input_data) -> list[str]:
    """predict's input_data as a list of strings: a string, a non-empty list of strings, or (MindFormers'
    meaning) the path of an existing text file, read as one prompt a line (blank lines skipped)."""
    if isinstance(input_data, (str, os.PathLike)) and os.path.isfile(input_data):
        return _lines_of(Path(input_data))
    texts = [input_data] if isinstance(input_data, str) else input_data
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"input_data={input_data!r} must be a string, a non-empty list of strings or the path of "
                          "a text file with one prompt a line", where="Trainer.predict")
    return texts


def _lines_of(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"input_data {path}: cannot read it as UTF-8 text ({getattr(exc, 'strerror', None) or exc})",
                          where="Trainer.predict") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"input_data {path}: the file holds no prompt (one prompt a line)", where="Trainer.predict")
    return lines


def continue_texts(net, sp, texts: list[str], max_length: int | None, max_new_tokens: int | None,
                   batch_size: int | None = None, **sampling) -> list[dict]:
    """Each text encoded with tokenizer `sp` and continued by `generate` (`sampling`: its do_sample, top_k,
    top_p, temperature, repetition_penalty, seed), `batch_size` texts at a time (None: all at once).
    max_length counts the prompt; max_new_tokens wins.  Greedy results do not depend on batch_size (a
    prompt batched with others gives the tokens it gives alone); sampled ones draw from one seeded
    stream per batch, so they do."""
    from .model import generate

    context = net.config.seq_length
    prompts = [sp.encode(t) or [sp.eos_id()] for t in texts]
    problems = []
    for t, p in zip(texts, prompts):
        if len(p) >= context:
            problems.append(f"input {t[:40]!r}... is {len(p)} tokens; the model's context is {context} "
                            "tokens and at least one must be left for generation: shorten the input")
    if max_new_tokens is None:
        max_new_tokens = (max_length - max(map(len, prompts))) if max_length else DEFAULT_MAX_NEW_TOKENS
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        problems.append(f"batch_size={batch_size!r} must be a positive integer (or None: every input at once)")
    if max_new_tokens < 1:
        problems.append(f"max_length={max_length} leaves no room for new tokens after the longest input "
                        f"({max(map(len, prompts))} tokens); raise it or use max_new_tokens")
    ConfigError.raise_if(problems, where="Trainer.predict")
    size = batch_size or len(prompts)
    new = []
    for i in range(0, len(prompts), size):
        new += generate(net, prompts[i:i + size], max_new_tokens=max_new_tokens, eos_id=sp.eos_id(),
                        pad_id=max(sp.pad_id(), 0), **sampling)
    return [{"text_generation_text": [sp.decode(p + n)]} for p, n in zip(prompts, new)]


def result_file_problems(output_dir: str) -> list[str]:
    """Why predict may not replace output_dir/text_generation_result.txt: it holds something a predict did
    not write (empty: absent, or a predict's results)."""
    path = Path(output_dir) / RESULT_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot read it ({exc}); move it away, predict writes its results there"]
    if all(line.startswith("{'text_generation_text': ") for line in lines):
        return []
    return [f"{path} exists and is not a predict's results; move it away, predict writes its results there"]


def write_results(output_dir: str, results: list[dict]) -> Path:
    """Write predict's results to output_dir/text_generation_result.txt as MindFormers does (`str(result)`
    a line), atomically; returns the path."""
    path = Path(output_dir) / RESULT_FILE
    atomic_write_bytes(path, "".join(f"{r}\n" for r in results).encode("utf-8"), what="predict's results")
    return path
