"""The sentencepiece tokenizer of a dataset: train one from the corpus, or load an existing one."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from ..errors import ConfigError, DataError

MODEL_TYPES = ("bpe", "unigram")
# Fixed special ids for tokenizers we train (MindFormers' GPT-2 has no pad; we reserve 0 for it).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# sentencepiece's trainer skips longer lines (all of them skipped: an opaque "!sentences_.empty()").
MAX_SENTENCE_BYTES = 16384


@dataclass(frozen=True)
class TokenizerInfo:
    """What a dataset's manifest records about its tokenizer."""

    vocab_size: int
    model_type: str
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int

    def to_manifest(self) -> dict:
        return dict(vocab_size=self.vocab_size, model_type=self.model_type, pad_id=self.pad_id,
                    unk_id=self.unk_id, bos_id=self.bos_id, eos_id=self.eos_id)


def load(model: str | Path | bytes) -> spm.SentencePieceProcessor:
    """Load a sentencepiece model from a path or serialized bytes; DataError if it is not one."""
    sp = spm.SentencePieceProcessor()
    try:
        if isinstance(model, bytes):
            sp.LoadFromSerializedProto(model)
        else:
            sp.Load(str(model))
    except (OSError, RuntimeError) as exc:
        where = "the given bytes" if isinstance(model, bytes) else str(model)
        raise DataError(f"--tokenizer {where} is not a sentencepiece model ({_short(exc)}); "
                        "pass a .model file written by sentencepiece, or use --vocab-size to train one") from None
    return sp


def describe(sp: spm.SentencePieceProcessor) -> TokenizerInfo:
    from sentencepiece import sentencepiece_model_pb2 as pb  # ships with sentencepiece

    proto = pb.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    model_type = pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
    return TokenizerInfo(vocab_size=sp.get_piece_size(), model_type=model_type, pad_id=sp.pad_id(),
                         unk_id=sp.unk_id(), bos_id=sp.bos_id(), eos_id=sp.eos_id())


def check_usable(sp: spm.SentencePieceProcessor, where: str) -> None:
    """A dataset needs an EOS id to separate documents."""
    if sp.eos_id() < 0:
        raise DataError(f"{where}: the sentencepiece model has no EOS piece (eos_id = -1); "
                        "train it with --eos_id set, or let mftasks train one with --vocab-size")


def train(documents: list[str], vocab_size: int, model_type: str, seed: int, max_sentences: int) -> bytes:
    """Train a tokenizer on the corpus' lines and return the serialized model.

    Deterministic: lines are sampled (at most `max_sentences`) with a seeded RNG, and sentencepiece's
    own generator is seeded too.
    """
    lines = [piece for doc in documents for ln in doc.split("\n") for piece in training_pieces(ln)]
    if not lines:
        raise DataError("no text to train a tokenizer on (every line is blank); check --input")
    if len(lines) > max_sentences:
        keep = np.sort(np.random.default_rng(seed).choice(len(lines), size=max_sentences, replace=False))
        lines = [lines[i] for i in keep]
    spm.set_random_generator_seed(seed)
    buf = _Sink()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, character_coverage=1.0,
            split_digits=True, input_sentence_size=0, shuffle_input_sentence=False,
            max_sentence_length=MAX_SENTENCE_BYTES, minloglevel=2, num_threads=1)
    except RuntimeError as exc:
        raise _translate_training_error(exc, vocab_size) from None
    return buf.data


def training_pieces(line: str, limit: int = MAX_SENTENCE_BYTES) -> list[str]:
    """A line as tokenizer training sentences of at most `limit` UTF-8 bytes each.

    A longer line (a minified file, a whole book on one line) is cut at the last space before the limit,
    or mid-word where a piece has no space.  Only tokenizer training sees the pieces: the document itself
    is tokenized whole, so the dataset holds every token of the line."""
    data = line.strip().encode("utf-8")
    pieces, pos = [], 0
    while len(data) - pos > limit:
        cut = data.rfind(b" ", pos + 1, pos + limit + 1)  # a space byte is never inside a character
        if cut < 0:
            cut = pos + limit
            while data[cut] & 0xC0 == 0x80:  # back to the start of a character
                cut -= 1
        pieces.append(data[pos:cut].decode("utf-8").strip())
        pos = cut
    pieces.append(data[pos:].decode("utf-8").strip())
    return [p for p in pieces if p]


class _Sink:
    def __init__(self):
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _translate_training_error(exc: RuntimeError, vocab_size: int) -> Exception:
    text = str(exc)
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", text)
    if m:
        return ConfigError(f"--vocab-size {vocab_size} is more than this corpus can support "
                           f"(at most {m.group(2)} pieces); lower --vocab-size or add text", where="data prepare")
    m = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", text)
    if m:
        return ConfigError(f"--vocab-size {vocab_size} is too small: the corpus has {m.group(2)} distinct "
                           f"characters that need a piece each; use --vocab-size {int(m.group(2)) + 8} or more",
                           where="data prepare")
    if "sentences_.empty()" in text:
        return DataError("sentencepiece found no sentence to train a tokenizer on; check that --input holds "
                         "text (see --pattern and --jsonl-field)")
    return DataError(f"sentencepiece could not train a tokenizer: {_short(exc)}")


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
