"""`mftasks data demo-corpus OUT`: the embedded default corpus, built without any download.

- pretrain/stdlib_docstrings.jsonl: the help topics of `pydoc_data` (the language reference that
  `help()` shows) and the docstrings of the Python standard library that ships with this interpreter
  (module, class and function docstrings, read with `ast`, never imported), in sorted file order,
  deduplicated, capped at `max_bytes`.
- finetune/qa.jsonl: question/answer pairs of another domain (arithmetic, counting, word games),
  generated with a fixed seed; every answer is checkable.
- checks/qa_checks.jsonl: held-out question/answer pairs for exact-match checks: distinct questions,
  none of which appears in qa.jsonl (so neither in the finetune train nor eval split prepared from it).

Deterministic for a given Python version: the same interpreter gives byte-identical files.
"""
from __future__ import annotations

import ast
import json
import keyword
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputExistsError
from ..files import atomic_write_bytes

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3",
              "ensurepip", "turtledemo"}
_WORDS = sorted({w for w in keyword.kwlist if w.isalpha() and len(w) > 2}
                | {"python", "module", "string", "number", "letter", "window", "garden", "planet", "silver",
                   "orange", "river", "bridge", "castle", "pencil", "rocket", "summer", "winter", "yellow",
                   "forest", "market", "doctor", "guitar", "butter", "camera", "dragon", "flower", "island"})


@dataclass
class DemoCorpus:
    pretrain: Path
    finetune: Path
    checks: Path
    pretrain_bytes: int
    pretrain_documents: int
    finetune_documents: int


def build(out: str | Path, max_bytes: int = 3_000_000, qa_pairs: int = 10_000, checks: int = 200,
          seed: int = 7) -> DemoCorpus:
    """Write the demo corpora under out/ (refuses a folder that holds other files)."""
    out = Path(out)
    targets = {"pretrain": out / "pretrain" / "stdlib_docstrings.jsonl",
               "finetune": out / "finetune" / "qa.jsonl", "checks": out / "checks" / "qa_checks.jsonl"}
    expected = {t.relative_to(out) for t in targets.values()}
    if out.is_dir():
        foreign = [p for p in out.rglob("*") if p.is_file() and p.relative_to(out) not in expected]
        if foreign:
            raise OutputExistsError(f"{out} holds other files ({foreign[0]}...); choose an empty or new folder")
    docs = list(stdlib_docstrings(max_bytes))
    held_out, train_qa = held_out_split(seed, qa_pairs, checks)
    for path in targets.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    pre = _jsonl([{"text": d} for d in docs])
    atomic_write_bytes(targets["pretrain"], pre)
    atomic_write_bytes(targets["finetune"], _jsonl([{"text": _qa_text(q, a), "question": q, "answer": a}
                                                    for q, a in train_qa]))
    atomic_write_bytes(targets["checks"], _jsonl([{"question": q, "answer": a, "prompt": _qa_prompt(q)}
                                                  for q, a in held_out]))
    return DemoCorpus(targets["pretrain"], targets["finetune"], targets["checks"], len(pre), len(docs), len(train_qa))


def stdlib_docstrings(max_bytes: int):
    """Yield 'qualified.name\\ndocstring' texts from the standard library's sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    total, seen = 0, set()
    for name, doc in _help_topics(root):
        seen.add(doc)
        text = f"{name}\n{doc}"
        total += len(text.encode("utf-8")) + 12
        yield text
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for name, doc in _docstrings(tree, module):
            if len(doc) < 60 or doc in seen:
                continue
            seen.add(doc)
            text = f"{name}\n{doc}"
            total += len(text.encode("utf-8")) + 12
            yield text
            if total >= max_bytes:
                return


def _help_topics(root: Path):
    """The pydoc_data help topics (a dict literal of long reference texts), sorted by topic."""
    path = root / "pydoc_data" / "topics.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            for key in sorted(topics):
                yield f"help topic {key}", topics[key].strip()


def _docstrings(tree: ast.Module, module: str):
    doc = ast.get_docstring(tree)
    if doc:
        yield module, doc
    stack = [(node, module) for node in tree.body]
    while stack:
        node, prefix = stack.pop(0)
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                yield name, doc
            if isinstance(node, ast.ClassDef):
                stack.extend((child, name) for child in node.body)


def held_out_split(seed: int, n_train: int, n_checks: int) -> tuple[list, list]:
    """(checks, train): n_checks distinct pairs, then n_train pairs whose questions are none of them.

    One seeded stream: the first distinct questions become the checks; later draws of a check question
    are skipped, so a check can only be answered by generalising, never by recalling a training pair."""
    pairs = _qa_stream(seed)
    checks: dict[str, str] = {}
    while len(checks) < n_checks:
        q, a = next(pairs)
        checks.setdefault(q, a)
    train = []
    while len(train) < n_train:
        q, a = next(pairs)
        if q not in checks:
            train.append((q, a))
    return list(checks.items()), train


def _qa_stream(seed: int):
    rng = random.Random(seed)
    makers = [_add, _subtract, _successor, _parity, _reverse, _count_letters]
    while True:
        yield rng.choice(makers)(rng)


def qa_pairs_of(seed: int, n: int):
    """Yield n (question, answer) pairs of checkable facts, from a seeded generator."""
    rng = random.Random(seed)
    makers = [_add, _subtract, _successor, _parity, _reverse, _count_letters]
    for _ in range(n):
        yield rng.choice(makers)(rng)


def _add(rng):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} plus {b}?", str(a + b)


def _subtract(rng):
    a = rng.randint(0, 99)
    b = rng.randint(0, a)
    return f"What is {a} minus {b}?", str(a - b)


def _successor(rng):
    a = rng.randint(0, 998)
    return f"Which number comes after {a}?", str(a + 1)


def _parity(rng):
    a = rng.randint(0, 999)
    return f"Is {a} even or odd?", "even" if a % 2 == 0 else "odd"


def _reverse(rng):
    w = rng.choice(_WORDS)
    return f"Spell the word '{w}' backwards.", w[::-1]


def _count_letters(rng):
    w = rng.choice(_WORDS)
    return f"How many letters are in the word '{w}'?", str(len(w))


def _qa_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _qa_text(question: str, answer: str) -> str:
    return f"{_qa_prompt(question)} {answer}"


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
