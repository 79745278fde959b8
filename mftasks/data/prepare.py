"""`mftasks data prepare`: corpus → sentencepiece tokenizer → packed MindRecord dataset + manifest.

Atomic and idempotent: the dataset is built in a hidden folder beside the output and renamed into
place at the end; the same inputs and parameters give the same `dataset_id`, and a verified dataset
with that id is left alone ("up to date").

What may be replaced (checked before anything is written):
- an output that is an input (or --tokenizer), lies inside one, or holds one: refused, --force included;
- a folder holding anything but one mftasks dataset (a user's files, or a dataset with extra files in
  it): refused, --force included;
- an mftasks dataset of other inputs or parameters: replaced only with --force;
- an mftasks dataset of the same inputs and parameters: kept when it verifies ("up to date"), rebuilt
  when its files are damaged (no --force needed: the same dataset is written back).
A full disk ends in DiskFullError naming the output and the space needed; nothing partial is kept, and
the hidden folders of earlier runs that died are removed by the next run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import __version__
from ..errors import ConfigError, DataError
from ..files import (disk_full_as_error, fsync_tree, overlap_problems, publish_dir, remove_stale_staging,
                     replace_problems, sha256_file, sha256_json, staging_dir)
from ..typed_config import Checks, TypedConfig
from . import manifest as mf
from . import packing, shards, sources
from . import tokenizer as tok

MAX_SEQ_LENGTH = 131072
TOKENIZER_FILE = "tokenizer.model"
# MindSpore's MindRecord writer refuses to write a page while less than 10 MiB are free on the disk.
MINDRECORD_FREE_BYTES = 10 << 20


@dataclass
class PrepareSpec(TypedConfig):
    """Everything `prepare` needs; validated as a whole before any work starts."""

    inputs: list[str | os.PathLike]
    """Text files, folders (scanned recursively for `patterns`) or .jsonl files."""
    output: str | os.PathLike
    """Dataset folder to create or update."""
    seq_length: int = 1024
    """Model context length; samples hold seq_length + 1 tokens."""
    vocab_size: int | None = None
    """Train a tokenizer of this many pieces (exclusive with `tokenizer`)."""
    tokenizer: str | os.PathLike | None = None
    """Reuse this sentencepiece .model file (exclusive with `vocab_size`)."""
    tokenizer_type: str = "bpe"
    """bpe or unigram, when training a tokenizer."""
    max_sentences: int = 300_000
    """At most this many lines (seeded sample) train the tokenizer, so big corpora stay fast."""
    eval_fraction: float = 0.05
    """Share of documents held out for evaluation (0 = no eval split)."""
    seed: int = 1234
    """Seeds the eval split and tokenizer training."""
    patterns: tuple[str, ...] = sources.DEFAULT_PATTERNS
    """File name patterns picked up inside input folders."""
    jsonl_field: str = "text"
    """Field that holds the text in JSONL inputs."""
    num_shards: int = 1
    """MindRecord files per split."""
    workers: int = 1
    """Tokenizer processes; the output is byte-identical for any value."""
    force: bool = False
    """Replace an mftasks dataset of other inputs or parameters in `output` (never anything else)."""

    CHECK_ON_INIT: ClassVar[bool] = False
    """Checked by `prepare` / `plan`, together with the inputs, output and tokenizer on disk (one error for all)."""

    def _check(self, c: Checks) -> None:
        # Messages name the command-line flags: `mftasks data prepare` is where these are set.
        if c.ok("output") and not self.output:
            c.problem("--output is required: the dataset folder to write")
        if c.ok("seq_length") and self.seq_length < 2:
            c.problem(f"--seq-length {self.seq_length!r} is too small: a sample needs at least 2 tokens to predict; "
                      "use e.g. 128 or 1024")
        elif c.ok("seq_length") and self.seq_length > MAX_SEQ_LENGTH:
            c.problem(f"--seq-length {self.seq_length} is absurdly large (limit {MAX_SEQ_LENGTH}); "
                      "use the model's context length, e.g. 1024 for gpt2")
        if (self.vocab_size is None) == (self.tokenizer is None):
            c.problem("give exactly one of --tokenizer PATH (reuse a sentencepiece model) or --vocab-size N "
                      "(train one)")
        if c.ok("vocab_size") and self.vocab_size is not None and not 16 <= self.vocab_size <= 1_000_000:
            c.problem(f"--vocab-size {self.vocab_size!r} must be an integer between 16 and 1000000")
        if c.ok("tokenizer") and self.tokenizer is not None and not Path(self.tokenizer).is_file():
            c.problem(f"--tokenizer {self.tokenizer}: no such file")
        if c.ok("tokenizer_type") and self.tokenizer_type not in tok.MODEL_TYPES:
            c.problem(f"--tokenizer-type {self.tokenizer_type!r} is not one of {', '.join(tok.MODEL_TYPES)}")
        for flag, name, low, high in (("--max-sentences", "max_sentences", 100, None),
                                      ("--eval-fraction", "eval_fraction", 0, 0.5),
                                      ("--num-shards", "num_shards", 1, 1000), ("--workers", "workers", 1, 256)):
            value = getattr(self, name)
            if c.ok(name) and not (low <= value and (high is None or value <= high)):
                c.problem(f"{flag} {value!r} must be " + (f"an integer >= {low}" if high is None
                                                         else f"between {low} and {high}"))
        if c.ok("jsonl_field") and not self.jsonl_field:
            c.problem("--jsonl-field must not be empty")
        if c.ok("patterns") and not self.patterns:
            c.problem("--pattern: give at least one file name pattern, e.g. '*.txt'")

    def params(self) -> dict:
        """The parameters that shape the output (they enter the dataset_id)."""
        return {"seq_length": self.seq_length, "eval_fraction": float(self.eval_fraction), "seed": self.seed,
                "vocab_size": self.vocab_size if self.tokenizer is None else None,
                "tokenizer_type": self.tokenizer_type if self.tokenizer is None else None,
                "max_sentences": self.max_sentences if self.tokenizer is None else None,
                "patterns": list(self.patterns), "jsonl_field": self.jsonl_field, "num_shards": self.num_shards}


@dataclass
class PrepareResult:
    """What `prepare` did."""

    status: str  # "created", "replaced" or "up_to_date"
    output: Path
    dataset_id: str
    manifest: dict
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def train_samples(self) -> int:
        return self.manifest["splits"]["train"]["samples"]

    @property
    def eval_samples(self) -> int:
        return self.manifest["splits"]["eval"]["samples"]

    @property
    def tokens(self) -> int:
        return sum(self.manifest["splits"][s]["tokens"] for s in mf.SPLITS)


def plan(spec: PrepareSpec) -> str:
    """Validate spec and read its sources; return the dataset_id it would produce (nothing is written)."""
    return _plan(spec)[1]


_WHERE = "data prepare"


def _output_path(spec: PrepareSpec) -> Path:
    """--output as an absolute path ('.' and '..' resolved by name, symlinks not followed)."""
    return Path(os.path.abspath(Path(spec.output).expanduser()))


def _plan(spec: PrepareSpec) -> tuple[sources.Corpus, str, dict | None]:
    """Validate, read the sources; (corpus, dataset_id, the output's manifest if it is that dataset, verified)."""
    problems = spec.problems()
    files, found = sources.discover(spec.inputs, spec.patterns)
    problems += found
    if spec.output:
        problems += _output_problems(spec)
    problems += _tokenizer_problems(spec)
    ConfigError.raise_if(problems, where=_WHERE)
    corpus = sources.read_corpus(files, spec.jsonl_field)
    dataset_id = _dataset_id(corpus, spec)
    out = _output_path(spec)
    existing = _existing(out)
    if existing is None:
        return corpus, dataset_id, None
    if existing.get("dataset_id") == dataset_id:  # the same dataset: kept if intact, else written back
        return corpus, dataset_id, None if mf.verify(out, existing) else existing
    what = (f"an mftasks dataset of other inputs or parameters (dataset_id {str(existing.get('dataset_id'))[:16]}, "
            f"this one would be {dataset_id[:16]})")
    ConfigError.raise_if(replace_problems(spec.output, True, spec.force, what), where=_WHERE)
    return corpus, dataset_id, None


def prepare(spec: PrepareSpec) -> PrepareResult:
    """Build (or confirm up to date) the dataset described by spec."""
    start = time.perf_counter()
    corpus, dataset_id, up_to_date = _plan(spec)
    out = _output_path(spec)
    remove_stale_staging(out)  # hidden folders of earlier runs of this output that died
    given = Path(spec.output).expanduser()  # reported as given (flows pass project-relative paths)
    if up_to_date is not None:
        return PrepareResult("up_to_date", given, dataset_id, up_to_date, corpus.warnings,
                             time.perf_counter() - start)

    out.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out)
    try:
        manifest = _build(staged, out, corpus, spec, dataset_id)
        fsync_tree(staged)
        status = "replaced" if out.exists() else "created"
        publish_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return PrepareResult(status, given, dataset_id, manifest, corpus.warnings, time.perf_counter() - start)


def _output_problems(spec: PrepareSpec) -> list[str]:
    """What forbids writing --output, whatever the flags (replacing a dataset needs --force: see _plan)."""
    out = _output_path(spec)
    problems = overlap_problems(spec.output, [*spec.inputs, spec.tokenizer])
    if out.is_dir() and not out.is_symlink() and mf.is_dataset(out):
        extra = mf.foreign_files(out, mf.read(out))
        if extra:
            shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
            problems.append(f"--output {spec.output} is an mftasks dataset but also holds files it did not write "
                            f"({shown}); mftasks never replaces what it did not create (--force included): "
                            "move them out, or choose another folder")
    else:
        problems += replace_problems(spec.output, False, spec.force, "an mftasks dataset")
    if problems:
        return problems
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not _writable(parent):
        return [f"--output {spec.output}: {parent} is not writable"]
    return []


def _tokenizer_problems(spec: PrepareSpec) -> list[str]:
    if not spec.tokenizer or not Path(spec.tokenizer).is_file():
        return []
    try:
        tok.check_usable(tok.load(spec.tokenizer), f"--tokenizer {spec.tokenizer}")
    except DataError as exc:
        return [str(exc)]
    return []


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _existing(out: Path) -> dict | None:
    try:
        return mf.read(out)
    except DataError:
        return None


def _dataset_id(corpus: sources.Corpus, spec: PrepareSpec) -> str:
    tokenizer = {"sha256": sha256_file(spec.tokenizer)} if spec.tokenizer else {"trained": True}
    return sha256_json({"format_version": mf.FORMAT_VERSION,
                        "sources": [[s.sha256, s.size, s.kind] for s in corpus.sources],
                        "params": spec.params(), "tokenizer": tokenizer})


def _build(staged: Path, out: Path, corpus: sources.Corpus, spec: PrepareSpec, dataset_id: str) -> dict:
    """Write the dataset into `staged` (a hidden folder beside `out`, on the same disk); its manifest."""
    documents = corpus.documents
    if spec.tokenizer:
        model_proto = Path(spec.tokenizer).read_bytes()
    else:
        model_proto = tok.train(documents, spec.vocab_size, spec.tokenizer_type, spec.seed, spec.max_sentences)
    sp = tok.load(model_proto if not spec.tokenizer else spec.tokenizer)
    tok.check_usable(sp, spec.tokenizer or "trained tokenizer")
    info = tok.describe(sp)

    token_docs = packing.tokenize(documents, model_proto, spec.workers)
    train_idx, eval_idx = packing.split_documents(len(documents), spec.eval_fraction, spec.seed)
    splits = {"train": packing.pack(token_docs, train_idx, spec.seq_length, info.eos_id),
              "eval": packing.pack(token_docs, eval_idx, spec.seq_length, info.eos_id)}
    _check_enough(splits, spec)

    # Every write names the output (not the hidden staging folder) and the space the rest still needs.
    needed = len(model_proto) + sum(shards.estimated_bytes(p.samples) for p in splits.values()) + (1 << 16)
    _write(staged, out, TOKENIZER_FILE, model_proto, needed)
    needed -= len(model_proto)
    split_entries = {}
    for name, packed in splits.items():
        files = []
        if len(packed.samples):
            with disk_full_as_error(out / name, f"the {name} split (MindRecord; MindSpore's writer also keeps "
                                    f"{MINDRECORD_FREE_BYTES >> 20} MiB free)", needed + MINDRECORD_FREE_BYTES):
                files = shards.write_split(packed.samples, staged / name, name, spec.num_shards)
            needed -= shards.estimated_bytes(packed.samples)
        split_entries[name] = {"documents": packed.documents, "samples": int(len(packed.samples)),
                               "tokens": packed.tokens, "dropped_tokens": packed.dropped_tokens, "shards": files}
    manifest = {
        "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "dataset_id": dataset_id,
        "created_by": f"mftasks {__version__}",
        "seq_length": spec.seq_length, "sample_length": spec.seq_length + 1,
        "columns": shards.SCHEMA,
        "tokenizer": {"file": TOKENIZER_FILE, "size": (staged / TOKENIZER_FILE).stat().st_size,
                      "sha256": sha256_file(staged / TOKENIZER_FILE), "trained": spec.tokenizer is None,
                      "source": str(Path(spec.tokenizer).resolve()) if spec.tokenizer else None, **info.to_manifest()},
        "sources": [s.to_manifest() for s in corpus.sources],
        "params": spec.params(),
        "run": {"workers": spec.workers},  # does not change the output
        "splits": split_entries,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _write(staged, out, mf.MANIFEST, text.encode("utf-8"), needed)
    return manifest


def _write(staged: Path, out: Path, name: str, data: bytes, needed: int) -> None:
    """staged/name = data (fsynced with the whole folder before it is published)."""
    with disk_full_as_error(out / name, name, needed):
        (staged / name).write_bytes(data)


def _check_enough(splits: dict[str, packing.PackedSplit], spec: PrepareSpec) -> None:
    problems = []
    width = spec.seq_length + 1
    if len(splits["train"].samples) == 0:
        problems.append(f"the train split has {splits['train'].tokens} tokens, fewer than one sample of "
                        f"seq_length + 1 = {width}; add text or lower --seq-length")
    if spec.eval_fraction > 0 and len(splits["eval"].samples) == 0:
        problems.append(f"the eval split has {splits['eval'].tokens} tokens, fewer than one sample of {width}; "
                        "raise --eval-fraction, lower --seq-length, or pass --eval-fraction 0")
    if problems:
        raise DataError("not enough text:\n" + "\n".join(f"  - {p}" for p in problems))


def spec_dict(spec: PrepareSpec) -> dict:
    return asdict(spec)
