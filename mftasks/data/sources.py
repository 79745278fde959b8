"""Corpus sources: find the input files and read them into documents.

What counts as a document:
- a plain text file is split into paragraphs (runs of blank lines separate them); each paragraph is
  one document, so the train/eval split works even on a single big file;
- each line of a JSONL file is one document (the text in `jsonl_field`).

Line breaks: "\n", "\r\n" and a lone "\r" (old Mac files) all end a line.

Files that are binary or not UTF-8:
- found while scanning a folder: skipped, with one warning naming every skipped file;
- named directly with --input: an error (you pointed at it, so it is probably a mistake).
A file that cannot be read (an I/O or permission error) is an error either way; an --input that is not a
regular file (a FIFO, a device) is refused before anything is read.

--pattern picks files inside each input folder only: an absolute pattern or one with a `..` part is
refused, so a pattern never reaches outside --input.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DataError

DEFAULT_PATTERNS = ("*.txt", "*.md")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n")
_LINE_BREAK = re.compile(r"\r\n?")
_MAX_LISTED = 20


@dataclass(frozen=True)
class SourceFile:
    """One input file: where it is, how to read it, and its identity (size + sha256)."""

    path: Path
    kind: str  # "text" or "jsonl"
    explicit: bool  # named directly with --input (not found by a folder scan)


@dataclass(frozen=True)
class SourceRecord:
    """A read source: its identity and its documents."""

    path: Path
    kind: str
    size: int
    sha256: str
    documents: tuple[str, ...]

    def to_manifest(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "size": self.size,
                "sha256": self.sha256, "documents": len(self.documents)}


@dataclass
class Corpus:
    """All sources read, with the warnings gathered while reading."""

    sources: list[SourceRecord]
    warnings: list[str]

    @property
    def documents(self) -> list[str]:
        return [d for s in self.sources for d in s.documents]


def discover(inputs: list[str | Path], patterns=DEFAULT_PATTERNS) -> tuple[list[SourceFile], list[str]]:
    """Expand --input paths into source files (folders recursively); return (files, problems)."""
    files: list[SourceFile] = []
    problems: list[str] = []
    seen: set[Path] = set()
    if not inputs:
        problems.append("no input given: pass one or more --input PATH (text files, folders or .jsonl files)")
    bad_patterns = pattern_problems(patterns)
    problems += bad_patterns
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            problems.append(f"--input {raw}: no such file or folder")
            continue
        if not path.is_dir() and not path.is_file():
            problems.append(f"--input {raw} is not a regular file or folder (a FIFO, socket or device); "
                            "copy the text into a file and pass that")
            continue
        if path.is_dir() and bad_patterns:
            continue  # never glob with a pattern that could leave the folder
        if path.is_dir():
            found = sorted({p for pat in patterns for p in path.rglob(pat) if p.is_file()},
                           key=lambda p: p.relative_to(path).as_posix())
            if not found:
                problems.append(f"--input {raw}: folder has no files matching {', '.join(patterns)}"
                                " (change --pattern to pick other files)")
            candidates = [(p, False) for p in found]
        else:
            candidates = [(path, True)]
        for p, explicit in candidates:
            key = p.resolve()
            if key in seen:
                continue
            seen.add(key)
            kind = "jsonl" if p.suffix.lower() == ".jsonl" else "text"
            files.append(SourceFile(path=key, kind=kind, explicit=explicit))
    return files, problems


def pattern_problems(patterns) -> list[str]:
    """Problems with --pattern values: each must be relative and stay inside the input folder."""
    problems = []
    for pat in patterns:
        if not pat or not str(pat).strip():
            problems.append("--pattern '': give a file name pattern, e.g. '*.txt'")
        elif str(pat).startswith(("/", "~")) or PurePosixPath(pat).is_absolute():
            problems.append(f"--pattern {pat!r} is an absolute path; a pattern picks files inside each --input "
                            "folder: give a relative one such as '*.txt', and pass other folders with --input")
        elif ".." in PurePosixPath(pat).parts:
            problems.append(f"--pattern {pat!r} reaches outside the --input folder ('..'); a pattern picks files "
                            "inside each --input folder: pass the other folder with --input instead")
    return problems


def read_corpus(files: list[SourceFile], jsonl_field: str = "text") -> Corpus:
    """Read every source into documents; raise one DataError listing every problem found."""
    sources: list[SourceRecord] = []
    problems: list[str] = []
    skipped: list[str] = []
    for src in files:
        try:
            data = src.path.read_bytes()
        except OSError as exc:
            problems.append(f"{src.path}: cannot read it ({exc.strerror or exc}); check the file (permissions, "
                            "disk) or leave it out of --input")
            continue
        text = _decode(data)
        if text is None:
            if src.explicit:
                problems.append(f"{src.path}: not UTF-8 text (binary or another encoding); "
                                "convert it to UTF-8 or leave it out of --input")
            else:
                skipped.append(str(src.path))
            continue
        if src.kind == "jsonl":
            docs, bad = _jsonl_documents(src.path, text, jsonl_field)
            problems.extend(bad)
        else:
            docs = _text_documents(text)
        sources.append(SourceRecord(path=src.path, kind=src.kind, size=len(data),
                                    sha256=hashlib.sha256(data).hexdigest(), documents=tuple(docs)))
    if problems:
        raise DataError(_listing("cannot read the corpus", problems))
    warnings = []
    if skipped:
        warnings.append(_listing(f"skipped {len(skipped)} file(s) that are binary or not UTF-8", skipped))
    corpus = Corpus(sources=sources, warnings=warnings)
    if not any(s.documents for s in sources):
        where = ", ".join(str(f.path) for f in files[:5]) or "(no files)"
        raise DataError(f"empty corpus: the inputs hold no text ({where}); "
                        "check --input, --pattern and --jsonl-field")
    return corpus


def _decode(data: bytes) -> str | None:
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.lstrip("\ufeff")


def _text_documents(text: str) -> list[str]:
    text = _LINE_BREAK.sub("\n", text)
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def _jsonl_documents(path: Path, text: str, field: str) -> tuple[list[str], list[str]]:
    docs, problems = [], []
    # Only real line breaks end a record: str.splitlines() would also split at U+2028, U+0085 ...,
    # which JSON allows raw inside a string.
    for lineno, line in enumerate(_LINE_BREAK.sub("\n", text).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict) or field not in record:
            have = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            problems.append(f"{path}:{lineno}: no field '{field}' (found: {have}); "
                            "set --jsonl-field to the field holding the text")
            continue
        value = record[field]
        if not isinstance(value, str):
            problems.append(f"{path}:{lineno}: field '{field}' is {type(value).__name__}, not a string")
            continue
        if value.strip():
            docs.append(value.strip())
    return docs, problems


def _listing(head: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n  ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"{head}:\n" + "\n".join(f"  - {i}" for i in shown) + more
