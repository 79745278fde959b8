"""TypedConfig: annotations checked, lists made tuples, hand-checked fields, a deferred check, missing keys."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from mftasks.errors import ConfigError
from mftasks.typed_config import Checks, TypedConfig


@dataclass(frozen=True)
class Tiny(TypedConfig):
    names: tuple[str, ...] = ("a",)
    argv: Sequence[str] = ("x",)
    env: Mapping[str, str] = field(default_factory=dict)
    size: int = 1

    HAND_CHECKED = ("argv",)

    def _check(self, c: Checks) -> None:
        c.require("size", lambda v: v >= 1, "must be >= 1")
        if isinstance(self.argv, str):
            c.problem(f"argv={self.argv!r} is a string; pass a list")


class TinyError(ConfigError):
    pass


@dataclass
class Deferred(TypedConfig):
    size: int
    label: str = "x"

    ERROR = TinyError
    CHECK_ON_INIT = False

    def _check(self, c: Checks) -> None:
        c.require("size", lambda v: v >= 1, "must be >= 1")

    def _where(self) -> str:
        return f"the {self.label} spec"


def test_lists_become_tuples_and_generic_types_are_named():
    assert Tiny(names=["a", "b"]).names == ("a", "b")
    with pytest.raises(ConfigError) as err:
        Tiny(names=[1], argv="x y", env=[], size=0)
    assert err.value.where == "Tiny" and err.value.problems == [
        "names=[1]: expected tuple[str, ...], got list",
        "env=[]: expected Mapping[str, str], got list",
        "size=0: must be >= 1",
        "argv='x y' is a string; pass a list"]  # hand-checked: not also "expected Sequence[str]"


def test_a_deferred_spec_is_checked_when_asked_with_its_own_error_and_place():
    spec = Deferred(size=0)  # nothing raised yet
    assert spec.problems() == ["size=0: must be >= 1"]
    with pytest.raises(TinyError) as err:
        spec.check()
    assert err.value.where == "the x spec"
    spec.size = 2
    spec.check()


def test_build_names_missing_required_keys_and_unknown_ones():
    obj, problems = Deferred.build({"lable": "y"}, where="file.yaml", path="spec[0]")
    assert obj is None and problems == [
        "unknown key 'lable' at spec[0].lable in file.yaml; did you mean 'label'?",
        "spec[0]: missing required key(s) size"]
