"""A MindFormers job's progress, read from the lines MindFormers itself prints (it writes no heartbeat).

MindFormers' training callback (MFLossMonitor) prints one line per logged step, to stdout and to
`log/rank_N/info.log`, of this shape (MindFormers 1.9.0; r1.x prints the same fields):

    { Epoch:[  1/  1], step:[    7/   16], loss:[4.858558/4.853934], per_step_time: 503ms, lr: [0.00059795], ...

The first loss is the step's, the second the running mean of the epoch.  `step` counts within the epoch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOSS_LINE = re.compile(
    r"Epoch:\[\s*(?P<epoch>\d+)/\s*(?P<epochs>\d+)\],\s*step:\[\s*(?P<step>\d+)/\s*(?P<steps>\d+)\],\s*"
    r"loss:\[\s*(?P<loss>[-+0-9.eEnaif]+)(?:/\s*(?P<mean>[-+0-9.eEnaif]+))?\]"
    r"(?:,\s*per_step_time:\s*(?P<ms>\d+)ms)?(?:,\s*lr:\s*\[\s*(?P<lr>[-+0-9.eE]+)\s*\])?")
"""MindFormers' loss line; `step` is within the epoch, out of `steps` per epoch."""


@dataclass(frozen=True)
class StepReport:
    """One loss line: where the job was and what it measured."""

    epoch: int
    epochs: int
    step: int
    """Step within the epoch (1-based)."""
    steps: int
    """Steps per epoch."""
    loss: float
    per_step_ms: int | None
    lr: float | None

    @property
    def global_step(self) -> int:
        return (self.epoch - 1) * self.steps + self.step

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps

    def as_row(self) -> dict:
        return {"step": self.global_step, "of": self.total_steps, "epoch": self.epoch, "loss": self.loss,
                "per_step_ms": self.per_step_ms, "lr": self.lr}


def parse_line(line: str) -> StepReport | None:
    """The StepReport of a MindFormers loss line, or None for any other line."""
    m = LOSS_LINE.search(line)
    if m is None:
        return None
    return StepReport(epoch=int(m["epoch"]), epochs=int(m["epochs"]), step=int(m["step"]), steps=int(m["steps"]),
                      loss=float(m["loss"]), per_step_ms=int(m["ms"]) if m["ms"] else None,
                      lr=float(m["lr"]) if m["lr"] else None)


def read_reports(log_path: str | Path) -> list[StepReport]:
    """Every loss line of a rank's log, in order (an unreadable or missing log has none)."""
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [r for r in map(parse_line, text.splitlines()) if r is not None]
