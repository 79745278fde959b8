"""The gang launcher: one process per rank, watched together, stopped together.

    from mftasks.launcher import LaunchSpec, launch
    result = launch(LaunchSpec(["python", "train.py"], nproc_per_node=2, heartbeat_dir="output/log"))
    if not result.ok:
        print(result.root_cause.describe(), "retry" if result.retryable else "fix and rerun")

Replaces MindFormers' run_distribute_*.sh loop (start each rank in the background, never look at it
again, wait 1836 s for HCCL to time out when one dies) and msrun (which kills the rest ~45 s after a
worker died): exit codes are collected per rank, the first failure by time is the root cause, the
others are stopped within stop_grace (2 s) plus a fraction of a second, hangs are found from the
Trainer's heartbeats, and failures are classified as user errors (do not retry) or infrastructure,
from the error record each rank writes itself (`record`, like torch elastic's @record), or from its exit.

Modules: spec (LaunchSpec), env (per-rank environment per mode), preflight, state (RankState),
gang (start / watch / stop), result (LaunchResult, RankFailure, FailureClass), record (a rank's own
error record: `from mftasks.launcher.record import record`), cli (`mftasks launch`).
"""
from __future__ import annotations

from .cli import add_commands
from .errors import GangFailedError, LaunchError, LaunchSpecError, PreflightError, RankStartError
from .gang import launch
from .preflight import preflight
from .result import FailureClass, LaunchResult, RankFailure, RankOutcome, classify
from .spec import MODES, LaunchSpec, parse_device_range

__all__ = [
    "FailureClass", "GangFailedError", "LaunchError", "LaunchResult", "LaunchSpec", "LaunchSpecError", "MODES",
    "PreflightError", "RankFailure", "RankOutcome", "RankStartError", "add_commands", "classify", "launch",
    "parse_device_range", "preflight",
]
