"""One pipeline stage (train, finetune, eval, predict) as a gang launch of `mftasks run` ranks.

A `StageSpec` builds a `RunConfig` (checked with the spec, before any process starts), whose YAML every rank
reads back; the ranks are started by the gang launcher, and the stage's result comes back through
`--result_file`.  The ranks' argv holds only options and paths this module makes: prompts are data, written to
`prompts.json` in the stage folder and passed as `--predict_file` (a prompt such as `--result_file=/x` stays a
prompt).  Each attempt logs under its own folder; before an attempt starts, the processes of earlier attempts
(recorded in `pids.json`) are proven gone, so two gangs of one stage never run at once.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import checkpoint as ckpt
from . import process
from .errors import ConfigError, MftasksError
from .files import atomic_write_bytes, atomic_write_json
from .run_config import RunConfig
from .typed_config import Checks, TypedConfig


class StageFailed(MftasksError):
    """A stage's gang failed; carries the launch result (root cause, failure class, retryable)."""

    def __init__(self, stage: str, result):
        self.stage = stage
        self.result = result
        self.retryable = bool(result.retryable)
        super().__init__(f"stage {stage} failed: {result.summary()}")


@dataclass
class StageSpec(TypedConfig):
    """What one stage runs. Its run configuration is a `RunConfig` (`run_config()`), checked together with the
    stage's own fields when the spec is built, and again by `run_stage` (a spec may be edited, files may go)."""

    name: str
    """Stage label used for folders (train, lora, eval_before, ...)."""
    run_mode: str
    """train | finetune | eval | predict (RUN_MODES of mftasks.run_config)."""
    output_dir: str | os.PathLike
    """The ranks' output folder (checkpoints, logs); a train or finetune stage resumes from its newest checkpoint."""
    model_type: str = "gpt2_tiny"
    """Model preset (mftasks.model.PRESETS)."""
    pet_method: str = ""
    """'' (full weights) or 'lora'."""
    train_dataset: str | None = None
    """Prepared dataset folder (`mftasks data prepare`) for train and finetune."""
    eval_dataset: str | None = None
    """Prepared dataset folder for eval."""
    load_checkpoint: str | None = None
    """Weights to start from (file or folder)."""
    nproc: int = 1
    """Ranks on this node."""
    nnodes: int = 1
    """Nodes in the job; world size = nproc * nnodes, all data parallel."""
    node_rank: int = 0
    """This node's index, 0..nnodes-1 (node 0 writes the result)."""
    master_addr: str = "127.0.0.1"
    """Host of the dynamic cluster's scheduler (node 0)."""
    batch_size: int = 8
    """Samples per step on each rank."""
    max_steps: int = 50
    """Training steps."""
    learning_rate: float = 1e-3
    """Peak learning rate of the cosine schedule."""
    warmup_steps: int = 2
    """Linear warmup steps."""
    save_steps: int = 25
    """Steps between checkpoints."""
    logging_steps: int = 1
    """Steps between loss log lines."""
    seed: int = 1234
    """One seed for the whole run."""
    dropout: float | None = None
    """Override the preset's dropout and attention dropout (e.g. 0 for bit-comparable runs)."""
    lora_rank: int | None = None
    """LoRA rank; None: the preset's."""
    lora_alpha: float | None = None
    """LoRA alpha; None: the preset's."""
    predict_data: list[str] = field(default_factory=list)
    """The prompts of a predict stage (passed to the ranks as a file, never as argv)."""
    max_new_tokens: int = 16
    """Tokens generated per prompt."""
    timeout: float | None = None
    """Seconds the whole gang may run; None: no limit."""
    hang_timeout: float | None = None
    """Seconds without heartbeat progress that count as a hang; None: derived (see LaunchSpec)."""
    master_port: int = 8118
    """Port of the dynamic cluster's scheduler."""
    device_target: str = "CPU"
    """MindSpore's device: CPU, GPU or Ascend; one this machine lacks is refused before anything starts."""

    def _check(self, c: Checks) -> None:
        c.require("nproc", lambda v: v >= 1, "must be >= 1")
        if c.ok("device_target"):
            c.extend(device_problems(self.device_target))
        if c.ok("nnodes", "node_rank") and (self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes):
            c.problem(f"node_rank={self.node_rank!r} must be in [0, nnodes={self.nnodes!r})")
        if not c.problems:  # the run config is built from well-formed fields only (one problem, said once)
            c.extend(self._build_run_config(resume=False)[1])
        for name in ("train_dataset", "eval_dataset"):
            folder = getattr(self, name)
            if c.ok(name) and folder is not None and not (Path(folder) / "manifest.json").is_file():
                c.problem(f"{name}={folder}: not a prepared dataset (no manifest.json); run `mftasks data prepare`")
        if c.ok("load_checkpoint") and self.load_checkpoint is not None and not Path(self.load_checkpoint).exists():
            c.problem(f"load_checkpoint={self.load_checkpoint}: no such file or folder")
        if self.run_mode == "predict" and c.ok("predict_data") and not self.predict_data:
            c.problem("predict needs predict_data (a list of prompts)")

    def _where(self) -> str:
        return f"stage {self.name}"

    def run_config(self, resume: bool = False) -> RunConfig:
        """What every rank of this stage runs (written as the stage's run.yaml); `resume` continues from
        the newest verified checkpoint of output_dir instead of starting afresh."""
        config, problems = self._build_run_config(resume)
        ConfigError.raise_if(problems, where=self._where())
        return config

    def _build_run_config(self, resume: bool) -> tuple[RunConfig | None, list[str]]:
        pet = {"pet_method": self.pet_method}
        if self.pet_method == "lora":
            pet.update({k: v for k, v in (("lora_rank", self.lora_rank), ("lora_alpha", self.lora_alpha))
                        if v is not None})
        dropout = {} if self.dropout is None else {"dropout": self.dropout, "attention_dropout": self.dropout}
        return RunConfig.build(dict(
            run_mode=self.run_mode, seed=self.seed, output_dir=os.fspath(self.output_dir),
            load_checkpoint=self.load_checkpoint, use_parallel=self.world_size > 1,
            context=dict(mode="GRAPH_MODE", device_target=self.device_target),
            parallel=dict(parallel_mode="DATA_PARALLEL", gradients_mean=True),
            parallel_config=dict(data_parallel=self.world_size),
            model=dict(model_type=self.model_type, **dropout), pet=pet,
            training=dict(batch_size=self.batch_size, max_steps=self.max_steps, learning_rate=self.learning_rate,
                          warmup_steps=self.warmup_steps, save_steps=self.save_steps,
                          logging_steps=self.logging_steps, lr_scheduler_type="cosine", sink_mode=False,
                          resume_training=resume, overwrite_output_dir=not resume),
            train_dataset=self.train_dataset, eval_dataset=self.eval_dataset,
            predict=dict(max_new_tokens=self.max_new_tokens)), where=self._where())

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def device_problems(device_target: str) -> list[str]:
    """Why this machine cannot run stages on `device_target` (empty: it can), naming the field and the fix."""
    from .context import device_unavailable_reason

    reason = device_unavailable_reason(device_target)
    if reason is None:
        return []
    return [f"device_target={device_target!r}: {reason}; run the stage on a machine that has it (a worker on "
            "that node), or set device_target='CPU'"]


@dataclass
class StageResult:
    name: str
    result: dict
    """What the rank process reported (train summary, eval metrics or predictions)."""
    ranks: list[dict]
    """Per-rank table: rank, pid, exit code or signal, last step, log path, failure class."""
    attempt: int
    config_path: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def stage_dir(work_dir: str | Path, name: str) -> Path:
    return Path(work_dir) / "stages" / name


def resume_point(spec: StageSpec) -> bool:
    """Resume when this stage already wrote a verified checkpoint (a retry, or a re-run of a crashed run)."""
    if spec.run_mode not in ("train", "finetune"):
        return False
    prefix = ckpt.PREFIX["lora" if spec.pet_method == "lora" else spec.run_mode]
    info, _ = ckpt.newest_verified(ckpt.rank_dir(spec.output_dir, 0), prefix=prefix)
    return info is not None


def run_stage(spec: StageSpec, work_dir: str | Path, attempt: int = 0, on_line=None) -> StageResult:
    """Validate, launch the stage's ranks and return their result; StageFailed when the gang fails."""
    from .launcher import LaunchSpec, launch

    spec.check()  # the spec may have been edited since it was built, and its files may be gone
    folder = stage_dir(work_dir, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    if ensure_previous_gang_gone(folder / "pids.json") and spec.world_size > 1 and spec.node_rank == 0:
        _wait_port_free(spec.master_addr, spec.master_port)  # the old scheduler's port may still be closing
    attempt = _free_attempt(folder / "log", attempt)  # a flow-run retry restarts run_count: never reuse logs
    resume = resume_point(spec)
    config_path = folder / "run.yaml"
    atomic_write_bytes(config_path, spec.run_config(resume).to_yaml().encode(), f"the run config of stage {spec.name}")
    result_file = folder / f"result-attempt{attempt}.json"
    result_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "mftasks.cli", "run", "--config", str(config_path.resolve()),
            "--result_file", str(result_file.resolve())]
    if spec.run_mode == "predict":  # prompts are data: a file the rank reads, never argv it parses
        prompts_file = folder / "prompts.json"
        atomic_write_bytes(prompts_file, json.dumps(list(spec.predict_data), ensure_ascii=False).encode(),
                           f"the prompts of stage {spec.name}")
        argv += ["--predict_file", str(prompts_file.resolve())]
    # One rank needs no cluster: skip the scheduler's start-up and shut-down (seconds per stage).
    mode = "standalone" if spec.world_size == 1 else "dynamic-cluster"
    launch_spec = LaunchSpec(program=argv, nproc_per_node=spec.nproc, mode=mode, log_dir=str(folder / "log"),
                             scheduler_grace=1.0,
                             heartbeat_dir=str(Path(spec.output_dir) / "log") if spec.run_mode in ("train", "finetune")
                             else None,
                             hang_timeout=spec.hang_timeout, timeout=spec.timeout, attempt=attempt,
                             nnodes=spec.nnodes, node_rank=spec.node_rank, master_addr=spec.master_addr,
                             master_port=spec.master_port, layout=(spec.world_size, 1, 1),
                             env={"GLOG_v": os.environ.get("GLOG_v", "3")})
    started = time.time()
    result = launch(launch_spec, on_line=on_line,
                    on_start=lambda pids: _record_pids(folder / "pids.json", pids, str(config_path.resolve())))
    ranks = result.rank_rows()
    if not result.ok:
        raise StageFailed(spec.name, result)
    if spec.node_rank != 0:  # global rank 0 (on node 0) writes the result
        return StageResult(spec.name, {}, ranks, attempt, str(config_path), time.time() - started)
    try:
        payload = json.loads(result_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MftasksError(f"stage {spec.name}: the ranks succeeded but wrote no result ({exc})") from None
    return StageResult(spec.name, payload["result"], ranks, attempt, str(config_path), time.time() - started)


def _free_attempt(log_dir: Path, attempt: int) -> int:
    """The first attempt number >= attempt whose log folder (LOG/rank_N or LOG/attempt_K) is unused."""
    while (log_dir / ("rank_0" if attempt == 0 else f"attempt_{attempt}")).exists():
        attempt += 1
    return attempt


def _wait_port_free(host: str, port: int, timeout: float = 15.0) -> None:
    from .launcher.preflight import port_problems

    deadline = time.monotonic() + timeout
    while port_problems(host, port) and time.monotonic() < deadline:
        time.sleep(0.25)


def _record_pids(path: Path, pids: list[int], marker: str) -> None:
    atomic_write_json(path, {"pids": list(pids), "marker": marker, "launcher_pid": os.getpid(), "time": time.time()})


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ensure_previous_gang_gone(path: Path, grace: float = 5.0) -> list[int]:
    """Stop any process of an earlier attempt still alive (e.g. its flow-run process was SIGKILLed)."""
    try:
        record = json.loads(path.read_text())
        pids, marker = record["pids"], record.get("marker", "")
    except (OSError, ValueError, KeyError):
        return []
    alive = [p for p in pids if process.alive(p) and marker in _cmdline(p)]  # never a recycled pid
    still = process.stop_groups(alive, grace)
    if still:
        raise MftasksError(f"processes {still} of an earlier attempt (from {path}) would not stop; "
                           "refusing to start a second gang")
    path.unlink(missing_ok=True)
    return alive
