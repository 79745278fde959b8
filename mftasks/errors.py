"""Project exceptions: one class per failure mode, under one base.

Every message says what is wrong, where it was set and how to fix it.  Validators collect all
problems first and raise once with the whole list (see `ConfigError.from_problems`).
"""
from __future__ import annotations


class MftasksError(Exception):
    """Base class of every error mftasks raises on purpose."""


class ProblemsError(MftasksError, ValueError):
    """Every problem a validator found, in one error: `.problems` (the list) and `.where` (what was read).

    One problem: "<head>: <problem>"; several: "<head><many>:" and one "  - <problem>" line each. Subclasses
    word the head."""

    def __init__(self, problems: list[str] | str, where: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        head = self._head(where)
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = head + self._many(len(self.problems)) + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)

    @staticmethod
    def _head(where: str | None) -> str:
        return f"problems in {where}" if where else "problems"

    @staticmethod
    def _many(n: int) -> str:
        return f" ({n} problems)"


class ConfigError(ProblemsError):
    """A configuration value (argument, YAML key, CLI flag) is invalid."""

    @staticmethod
    def _head(where: str | None) -> str:
        return f"invalid configuration in {where}" if where else "invalid configuration"

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
