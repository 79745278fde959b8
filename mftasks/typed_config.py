"""Typed configuration: the one base every config of the library is built on.

`TypedConfig` is the base of the config dataclasses (`TrainingArguments`, `ContextConfig`,
`ParallelContextConfig`, `ParallelConfig`, `RunConfig`, `GPT2Config`, `LoraConfig`, `LaunchSpec`, `StageSpec`,
`PrepareSpec`, `JobSpec`): each field is checked against its annotation, then `_check(checks)` adds ranges and
cross-field rules, and every problem is raised at once in one ConfigError (or the class's own subclass of it).
`problems()` gives the same list without raising, for specs that are checked again where they are used.
`from_dict` / `build` refuse unknown keys with a "did you mean" suggestion and name missing required ones.

`Key` and `check_section` do the same for a plain-dict section of a run file (`model`, `pet`, `predict`),
whose keys come from a table (see `mftasks.run_config`).
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mftasks.errors import ConfigError

__all__ = [
    "Checks", "Key", "TypedConfig", "check_section", "dotted", "from_text", "plain", "type_name", "type_ok",
    "unknown_key_problem", "wants_float", "wants_tuple",
]


def unknown_key_problem(key: Any, valid: Iterable[str], *, path: str = "", where: str | None = None) -> str:
    """Message for a key that is not a field: names the key, its dotted path, `where`, and the
    closest valid name (or lists the valid ones when nothing is close)."""
    valid = sorted(valid)
    at = f" at {path}.{key}" if path else ""
    loc = f" in {where}" if where else ""
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return f"unknown key '{key}'{at}{loc}{hint}"


def type_ok(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (a bool is not an int; an int is a fine float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a fine float; a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        (item, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(type_ok(v, item) for v in value)
    if origin is collections.abc.Sequence:
        (item, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, collections.abc.Sequence) and all(type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if origin is collections.abc.Mapping:
        return isinstance(value, Mapping)
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    """`hint` as a message writes it: `int or None`, `list[str]`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    if origin is not None and args:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def wants_float(hint: Any) -> bool:
    """Whether an int given for `hint` should be stored as a float."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return float in args and int not in args


def wants_tuple(hint: Any) -> bool:
    """Whether a list given for `hint` should be stored as a tuple (YAML and JSON have no tuples)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(typing.get_origin(a) is tuple for a in args) and not any(typing.get_origin(a) is list for a in args)


def from_text(value: Any, hint: Any) -> Any:
    """YAML 1.1 reads `1e-4` as a string: turn numeric strings into floats for float fields."""
    if wants_float(hint) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def dotted(path: str, text: str) -> str:
    """`text` under the dotted `path` (`training` + `seed=-1` -> `training.seed=-1`)."""
    return f"{path}.{text}" if path else text


def plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML/JSON friendly)."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Checks:
    """Collects problems for one config object; skips fields whose type is already wrong."""

    def __init__(self, obj: Any, skip: set[str]):
        self.obj, self.skip, self.problems = obj, skip, []

    def ok(self, *names: str) -> bool:
        """True when every named field has the right type (so range checks may read it)."""
        return not any(n in self.skip for n in names)

    def require(self, name: str, test: Callable[[Any], bool], requirement: str) -> None:
        """Record `name=value: requirement` unless `test(value)` holds."""
        if self.ok(name):
            value = getattr(self.obj, name)
            if not test(value):
                self.problems.append(f"{name}={value!r}: {requirement}")

    def problem(self, message: str) -> None:
        """Record a cross-field problem; the message should start with a field name."""
        self.problems.append(message)

    def extend(self, problems: Iterable[str]) -> None:
        """Record the problems of a part checked elsewhere (a plain-dict section, a nested config)."""
        self.problems.extend(problems)

    def set(self, name: str, value: Any) -> None:
        """Store a normalised value on the (frozen) dataclass."""
        object.__setattr__(self.obj, name, value)


class TypedConfig:
    """Base for config dataclasses: checks each field against its annotation, then calls
    `_check(checks)` for ranges and cross-field rules, and raises one ConfigError with every
    problem. Problem messages start with the field name so callers can prefix a dotted path."""

    ALIASES: ClassVar[dict[str, str]] = {}
    """Accepted alternative key names in `from_dict` (alias -> field)."""
    HAND_CHECKED: ClassVar[tuple[str, ...]] = ()
    """Fields whose type `_check` checks itself, with a message that says more than the annotation could
    (an argv given as one string, a LoRA target list given as one name); the annotation check skips them."""
    ERROR: ClassVar[type[ConfigError]] = ConfigError
    """What `__post_init__` raises: ConfigError or a subclass naming the failure mode (LaunchSpecError)."""
    CHECK_ON_INIT: ClassVar[bool] = True
    """False for a spec checked where it is used, together with what only that place can see (the
    inputs on disk of `prepare`): call `problems()` there."""

    def __post_init__(self) -> None:
        if self.CHECK_ON_INIT:
            self.check()

    def check(self) -> None:
        """Raise one ERROR listing every problem of the current values, if there are any."""
        problems = self.problems()
        if problems:
            raise self.ERROR(problems, self._where())

    def problems(self) -> list[str]:
        """Every problem of the current values (normalising them on the way, e.g. lists to tuples)."""
        hints = typing.get_type_hints(type(self))
        checks = Checks(self, set())
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            if f.name in self.HAND_CHECKED:
                continue
            if not type_ok(value, hint):
                checks.skip.add(f.name)
                checks.problem(f"{f.name}={value!r}: expected {type_name(hint)}, got {type(value).__name__}")
            elif wants_float(hint) and isinstance(value, int):
                checks.set(f.name, float(value))
            elif wants_tuple(hint) and isinstance(value, list):
                checks.set(f.name, tuple(value))
        self._check(checks)
        return checks.problems

    def _check(self, c: Checks) -> None:
        """Range and cross-field checks; subclasses override."""

    def _where(self) -> str:
        """What the error names as the place of the problems; subclasses may say more (a stage's name)."""
        return type(self).__name__

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (YAML/JSON friendly)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None):
        """Build from a mapping; unknown keys and bad values are all reported in one ConfigError."""
        where = where or cls.__name__
        obj, problems = cls.build(data, where=where)
        ConfigError.raise_if(problems, where=where)
        return obj

    @classmethod
    def build(cls, data: Mapping[str, Any] | None, *, where: str, path: str = ""):
        """Like `from_dict` but returns `(obj or None, problems)`; problems carry `path.` prefixes.
        Numeric strings for float fields (YAML reads `1e-4` as a string) are converted."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            return None, [f"{path or cls.__name__}: expected a mapping of keys, got {type(data).__name__} {data!r}"]
        names, hints = cls.field_names(), typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in data.items():
            name = cls.ALIASES.get(key, key)
            if name not in names:
                problems.append(unknown_key_problem(key, [*names, *cls.ALIASES], path=path, where=where))
            elif name in kwargs:
                problems.append(f"{dotted(path, name)}: set twice (as '{name}' and its alias); keep one")
            else:
                kwargs[name] = from_text(value, hints[name])
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            return None, problems + [f"{path + ': ' if path else ''}missing required key(s) {', '.join(missing)}"]
        try:
            return cls(**kwargs), problems
        except ConfigError as e:
            return None, problems + [dotted(path, p) for p in e.problems]

    def replace(self, **changes: Any):
        """A new, validated copy with `changes` applied (this object is never mutated)."""
        unknown = [k for k in changes if k not in self.field_names()]
        ConfigError.raise_if([unknown_key_problem(k, self.field_names(), where=f"{type(self).__name__}.replace")
                              for k in unknown], where=type(self).__name__)
        return dataclasses.replace(self, **changes)


_MISSING = object()


@dataclass(frozen=True)
class Key:
    """One key of a plain-dict section: its type, its range check and its default."""

    hint: Any
    test: Callable[[Any], bool] = lambda v: True
    requirement: str = ""
    default: Any = _MISSING
    normalise: Callable[[Any], Any] | None = None
    """Applied to a well-typed value before `test` (e.g. lower-casing a method name)."""


def check_section(name: str, data: Mapping[str, Any], spec: Mapping[str, Key]) -> tuple[dict[str, Any], list[str]]:
    """Validate the plain-dict section `name` against `spec`; returns the normalised dict (defaults filled)
    and every problem, each starting with `name.key`."""
    out, problems = {}, []
    for key, value in data.items():
        if key not in spec:
            problems.append(unknown_key_problem(key, spec, path=name))
            continue
        k = spec[key]
        value = from_text(value, k.hint)
        if not type_ok(value, k.hint):
            problems.append(f"{name}.{key}={value!r}: expected {type_name(k.hint)}, got {type(value).__name__}")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and wants_float(k.hint):
            value = float(value)
        if isinstance(value, tuple):
            value = list(value)
        if k.normalise is not None:
            value = k.normalise(value)
        if not k.test(value):
            problems.append(f"{name}.{key}={value!r}: {k.requirement}")
        out[key] = value
    for key, k in spec.items():
        if key not in out and key not in data and k.default is not _MISSING:
            out[key] = copy.copy(k.default)
    return out, problems
