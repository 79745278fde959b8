"""What a training rank reports while it runs.

- OUTPUT/log/rank_N/mindformer.log   the rank's log (as MindFormers)
- OUTPUT/log/rank_N/metrics.jsonl    one JSON line per logged step: step, loss, lr, tokens/s, wall time
- OUTPUT/log/rank_N/heartbeat.json   {step, time, pid}: replaced at most every 0.5 s (the launcher's hang signal)
- a live progress bar (loss, tokens/s, ETA) on a terminal, plain log lines otherwise
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

LOGGER = "mftasks"


def log_dir(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / "log" / f"rank_{rank}"


def setup_logging(output_dir: str | Path, rank: int) -> logging.Logger:
    """Send the `mftasks` logger to the rank's mindformer.log and to stderr (once per file)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    path = log_dir(output_dir, rank) / "mindformer.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
               for h in logger.handlers):
        for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(h)
            try:
                h.close()
            except OSError:  # an earlier run's log on a disk that has since filled: not this run's log
                pass
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(fh)
    if not any(getattr(h, "_mftasks_console", False) for h in logger.handlers):
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(logging.Formatter("[mftasks] %(message)s"))
        ch._mftasks_console = True
        logger.addHandler(ch)
    logger.propagate = False
    return logger


class StepReporter:
    """Metrics lines, heartbeat file and progress display for one training run of one rank."""

    def __init__(self, output_dir: str | Path, rank: int, total_steps: int, tokens_per_step: int,
                 logging_steps: int, stage: str, logger: logging.Logger):
        folder = log_dir(output_dir, rank)
        folder.mkdir(parents=True, exist_ok=True)
        self.metrics_path = folder / "metrics.jsonl"
        self.heartbeat_path = folder / "heartbeat.json"
        self.total = total_steps
        self.tokens_per_step = tokens_per_step
        self.every = max(1, logging_steps)
        self.stage = stage
        self.log = logger
        self.tty = sys.stderr.isatty()
        self.start = time.time()
        self._last_beat = 0.0
        self._window = (time.perf_counter(), 0)  # (time, step) at the start of the current rate window
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")

    def step(self, step: int, loss: float | None, lr: float) -> None:
        """Called after every optimizer step (1-based `step`); loss may be None between logging steps."""
        now = time.time()
        if now - self._last_beat >= 0.5 or step == self.total:
            self.heartbeat(step, now)
        if loss is None:
            return
        t0, s0 = self._window
        elapsed = time.perf_counter() - t0
        rate = (step - s0) * self.tokens_per_step / elapsed if elapsed > 0 and step > s0 else 0.0
        self._window = (time.perf_counter(), step)
        record = {"stage": self.stage, "step": step, "loss": round(float(loss), 6), "lr": float(lr),
                  "tokens_per_s": round(rate, 1), "wall_time": round(now - self.start, 3)}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        eta = (self.total - step) * self.tokens_per_step / rate if rate else 0.0
        text = (f"{self.stage} step {step}/{self.total} loss {loss:.4f} lr {lr:.3g} "
                f"{rate:,.0f} tok/s ETA {eta:,.0f}s")
        if self.tty:
            done = int(30 * step / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {text}")
            sys.stderr.flush()
            if step == self.total:
                sys.stderr.write("\n")
        if not self.tty or step == self.total:
            self.log.info(text)

    def heartbeat(self, step: int, now: float | None = None) -> None:
        now = now or time.time()
        tmp = self.heartbeat_path.with_name(f".heartbeat.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"step": step, "time": now, "pid": os.getpid(), "stage": self.stage}))
            os.replace(tmp, self.heartbeat_path)
        except OSError:  # a full disk: no temporary outlives the failed write
            tmp.unlink(missing_ok=True)
            raise
        self._last_beat = now

    def close(self) -> None:
        self._metrics.close()
