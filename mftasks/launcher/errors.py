"""The launcher's exceptions, all under `mftasks.errors.MftasksError`.

A failed rank is not an exception: `launch()` returns a `LaunchResult` saying so. These are raised for
a launch that cannot start (bad spec, failed preflight, a rank that cannot be executed) and, on
request, by `LaunchResult.raise_for_failure()`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mftasks.errors import ConfigError, MftasksError

if TYPE_CHECKING:
    from .result import LaunchResult


class LaunchError(MftasksError):
    """Base class of the launcher's errors."""


class LaunchSpecError(LaunchError, ConfigError):
    """A `LaunchSpec` field (or `mftasks launch` flag) is invalid; lists every problem at once."""

    def __init__(self, problems: list[str] | str, where: str | None = "LaunchSpec"):
        ConfigError.__init__(self, problems, where)


class PreflightError(LaunchError, ConfigError):
    """The machine is not ready for this launch (port taken, program missing, rank table does not
    cover the devices...); lists every problem found before any process started."""

    def __init__(self, problems: list[str] | str, where: str | None = "launch preflight"):
        ConfigError.__init__(self, problems, where)


class RankStartError(LaunchError):
    """The operating system refused to start a rank (exec failed); ranks already started were stopped."""


class GangFailedError(LaunchError):
    """Raised by `LaunchResult.raise_for_failure()`: the gang failed; `.result` holds the details and
    `.retryable` says whether a retry can help (infrastructure) or not (user error)."""

    def __init__(self, result: "LaunchResult"):
        self.result = result
        self.retryable = result.retryable
        rc = result.root_cause
        super().__init__(rc.describe() if rc is not None else "launch failed")
