"""Project exceptions: one class per failure mode, under one base.

Every message says what is wrong, where it was set and how to fix it.  Validators collect all
problems first and raise once with the whole list (see `ConfigError.raise_if`).
"""
from __future__ import annotations

from typing import ClassVar


class MftasksError(Exception):
    """Base class of every error mftasks raises on purpose."""


class ProblemsError(MftasksError, ValueError):
    """Every problem a validator found, in one error: `.problems` (the list) and `.where` (what was read).

    One problem: "<head>: <problem>"; several: "<head><many>:" and one "  - <problem>" line each. Subclasses
    word the head (HEAD without and with the place) and the count (MANY)."""

    HEAD: ClassVar[tuple[str, str]] = ("problems", "problems in {where}")
    MANY: ClassVar[str] = " ({n} problems)"

    def __init__(self, problems: list[str] | str, where: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        head = self.HEAD[1].format(where=where) if where else self.HEAD[0]
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = head + self.MANY.format(n=len(self.problems)) + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class ConfigError(ProblemsError):
    """A configuration value (argument, YAML key, CLI flag) is invalid."""

    HEAD = ("invalid configuration", "invalid configuration in {where}")

    @staticmethod
    def raise_if(problems: list[str], where: str | None = None) -> None:
        """Raise one ConfigError listing every problem, if there are any."""
        if problems:
            raise ConfigError(problems, where)


class DataError(MftasksError):
    """Input data (corpus, dataset folder, manifest, shard) is missing, malformed or corrupt."""


class OutputExistsError(MftasksError):
    """An output location holds something we must not overwrite."""


class DeviceError(MftasksError):
    """The requested device (Ascend, GPU) is not available on this machine."""


class CheckpointError(MftasksError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model."""


class RegressionError(MftasksError):
    """An evaluation got worse than allowed (nightly-eval's perplexity against the baseline or last night)."""


class DiskFullError(MftasksError):
    """A write ran out of space (ENOSPC or quota): names the path, the space needed and the space free."""
