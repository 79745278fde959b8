"""What a MindFormers job is: the user's own entry point, on N ranks, writing MindFormers' output folder.

The program is the user's (their `run_mindformer.py` with its YAML, or any program taking
run_mindformer.py's `--output_dir`, `--load_checkpoint` and `--resume_training` flags), run by the
interpreter they name: MindFormers pins its own MindSpore, so it usually lives in an environment of its own.
mftasks adds `--output_dir OUTPUT_DIR` to every attempt, and on a retry that can resume,
`--resume_training <rank 0's last file> --load_checkpoint OUTPUT_DIR/checkpoint` (replacing the program's
own `--load_checkpoint`), which is how MindFormers resumes from what its `checkpoint/rank_N/meta.json` say
(see resume.py).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..typed_config import Checks, TypedConfig

OWN_FLAGS = ("--output_dir", "--resume_training")
"""run_mindformer.py flags the job sets itself: the program may not set them (say output_dir on the job)."""


@dataclass(frozen=True)
class JobSpec(TypedConfig):
    """One MindFormers job on this node."""

    program: Sequence[str]
    """argv of each rank: the interpreter of MindFormers' environment, the entry point, its flags (no shell).
    Relative paths in it are relative to `cwd` (default output_dir): give absolute ones."""
    output_dir: str
    """MindFormers' output folder: checkpoint/rank_N/ (+ meta.json), log/rank_N/, strategy/."""
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 8118
    log_dir: str | None = None
    """The launcher's per-rank logs (LOG_DIR[/attempt_K]/rank_N/mindformer.log, worker_N.log); default
    OUTPUT_DIR/launch_log."""
    cwd: str | None = None
    """Working directory of the ranks (MindFormers writes ./output/log there at import); default OUTPUT_DIR."""
    env: Mapping[str, str] = field(default_factory=dict)
    resume: bool = True
    """Resume a retry from MindFormers' meta.json when every rank saved the same step."""
    watch_progress: bool = True
    """Find hangs from MindFormers' own loss lines (it writes no heartbeat): a rank that prints none for the
    hang timeout, or none within startup_timeout, is a hang (retryable).  Set False for a job that prints
    no loss lines (evaluate, predict)."""
    hang_timeout: float | None = None
    """Seconds without a new loss line that count as a hang; None: max(60 s, 10 x the median interval)."""
    startup_timeout: float = 900.0
    """Seconds a rank may take to print its first loss line (import, cluster, compile, first step)."""
    timeout: float | None = None

    HAND_CHECKED: ClassVar[tuple[str, ...]] = ("program", "env")

    def _check(self, c: Checks) -> None:
        program = self.program
        if isinstance(program, (str, bytes)) or not isinstance(program, Sequence) or not program \
                or not all(isinstance(a, (str, os.PathLike)) for a in program):
            c.problem(f"program={program!r}: must be a non-empty argv list, e.g. [\"/envs/mf/bin/python\", "
                      "\"run_mindformer.py\", \"--config\", \"job.yaml\"]")
        else:
            c.set("program", tuple(os.fspath(a) for a in program))
            for flag in OWN_FLAGS:
                if any(a == flag or a.startswith(flag + "=") for a in self.program):
                    c.problem(f"program sets {flag}: the job sets it itself (output_dir={self.output_dir!r}); "
                              f"remove {flag} from the program")
        if not isinstance(self.env, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in self.env.items()):
            c.problem(f"env={self.env!r}: must map names to strings")
        c.require("output_dir", bool, "must be a folder path")
        for name, low in {"nproc_per_node": 1, "nnodes": 1, "node_rank": 0}.items():
            c.require(name, lambda v: v >= low, f"must be an integer >= {low}")
        if self.hang_timeout is not None and self.watch_progress is False:
            c.problem(f"hang_timeout={self.hang_timeout!r} is set but watch_progress is False: hangs are found "
                      "from the loss lines; set watch_progress True or drop hang_timeout")
        for name in ("hang_timeout", "timeout"):
            c.require(name, lambda v: v is None or v > 0, "must be a number of seconds > 0 or None")
        c.require("startup_timeout", lambda v: v > 0, "must be a number of seconds > 0")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def launch_log_dir(self) -> str:
        return self.log_dir or os.path.join(self.output_dir, "launch_log")
