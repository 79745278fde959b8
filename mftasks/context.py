"""MindSpore context and parallel setup, MindFormers-style (`init_context`, `ContextConfig`,
`ParallelContextConfig`, `ParallelConfig`), honest about what runs on CPU.

What runs where: on CPU MindSpore runs data parallelism only, through its
dynamic cluster (`MS_ROLE`... set by `mftasks launch` or `msrun`). Semi-auto/auto parallel with
model_parallel = pipeline_stage = 1 *is* data parallelism, so on CPU `init_context` maps it to
DATA_PARALLEL with gradients_mean=True and logs that it did; model/pipeline/optimizer parallelism
is refused on CPU with a message saying it needs Ascend.

`mftasks.parallel` splits the model across ranks with explicit communication (tensor and pipeline
parallelism, CPU-tested against one process), but the Trainer does not drive it yet, so the layouts it
needs are still refused here for Trainer runs (issue 13).

MindSpore is imported inside functions so importing this module is cheap.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field

from mftasks.errors import ConfigError, DeviceError
from mftasks.typed_config import Checks, TypedConfig

__all__ = [
    "DEVICE_TARGETS", "PARALLEL_MODES", "ContextConfig", "ParallelConfig", "ParallelContextConfig",
    "ParallelPlan", "check_parallel_setup", "check_parallel_supported", "cluster_env", "device_available",
    "device_unavailable_reason", "init_context", "resolve_parallel_mode",
]

logger = logging.getLogger(__name__)

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
PARALLEL_MODES = ("STAND_ALONE", "DATA_PARALLEL", "SEMI_AUTO_PARALLEL", "AUTO_PARALLEL", "HYBRID_PARALLEL")
_MODE_NAMES = {"GRAPH_MODE": 0, "GRAPH": 0, "PYNATIVE_MODE": 1, "PYNATIVE": 1}
# MindFormers' integer parallel_mode: 0 data, 1 semi-auto, 2 auto, 3 hybrid.
_PARALLEL_MODE_INTS = {0: "DATA_PARALLEL", 1: "SEMI_AUTO_PARALLEL", 2: "AUTO_PARALLEL", 3: "HYBRID_PARALLEL"}
_SEARCH_MODES = ("sharding_propagation", "dynamic_programming", "recursive_programming")
_CPU_THREADS = 2  # runtime_num_threads=2 was the fastest for one process on the project's 2-core machines
_CLUSTER_VARS = ("MS_ROLE", "MS_WORKER_NUM", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_NODE_ID",
                 "RANK_TABLE_FILE", "RANK_ID", "RANK_SIZE", "DEVICE_ID", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_SIZE")


def _normalise_target(value: str) -> str:
    return {t.lower(): t for t in DEVICE_TARGETS}.get(value.strip().lower(), value)


@dataclass(frozen=True)
class ContextConfig(TypedConfig):
    """Where and how MindSpore runs in this process."""

    mode: int | str = 0
    """0 / "GRAPH_MODE" (fastest training) or 1 / "PYNATIVE_MODE"; stored as 0 or 1."""
    device_target: str = "CPU"
    """"CPU", "GPU" or "Ascend" (any case; stored in MindSpore's spelling)."""
    device_id: int | None = None
    """Device index; None = 0 in one process, the launcher's DEVICE_ID (local rank) in a cluster."""
    max_device_memory: str | None = None
    """Device memory cap such as "31GB" (Ascend/GPU only; ignored on CPU)."""
    save_graphs: bool = False
    """Dump compiled graphs into `save_graphs_path`."""
    save_graphs_path: str | None = None
    """Folder for graph dumps; required when save_graphs is True."""
    runtime_num_threads: int | None = None
    """MindSpore runtime threads; None = 2 on CPU, MindSpore's default elsewhere."""

    def _check(self, c: Checks) -> None:
        if c.ok("mode") and isinstance(self.mode, str):
            c.set("mode", _MODE_NAMES.get(self.mode.strip().upper(), self.mode))
        if c.ok("device_target"):
            c.set("device_target", _normalise_target(self.device_target))
        c.require("mode", lambda v: v in (0, 1) and not isinstance(v, bool),
                  "must be 0 / 'GRAPH_MODE' or 1 / 'PYNATIVE_MODE'")
        c.require("device_target", lambda v: v in DEVICE_TARGETS, f"must be one of {', '.join(DEVICE_TARGETS)}")
        c.require("device_id", lambda v: v is None or v >= 0, "must be >= 0 or None")
        c.require("max_device_memory", lambda v: v is None or _is_gb(v), "must look like '31GB' (a number then GB)")
        c.require("runtime_num_threads", lambda v: v is None or v >= 1, "must be >= 1 or None")
        if c.ok("save_graphs", "save_graphs_path") and self.save_graphs and not self.save_graphs_path:
            c.problem("save_graphs_path=None: save_graphs=True needs a folder to write graphs into")


def _is_gb(text: str) -> bool:
    number = text.strip()[:-2]
    try:
        return text.strip().endswith("GB") and float(number) > 0
    except ValueError:
        return False


@dataclass(frozen=True)
class ParallelContextConfig(TypedConfig):
    """How ranks cooperate (MindSpore auto-parallel context); used only when use_parallel is True."""

    parallel_mode: str | int = "DATA_PARALLEL"
    """One of PARALLEL_MODES (any case; MindFormers' ints 0-3 accepted). Default DATA_PARALLEL, the one
    mode that runs on every device (MindFormers defaults to STAND_ALONE / SEMI_AUTO_PARALLEL)."""
    gradients_mean: bool = True
    """Average (not sum) gradients across ranks; True for data parallelism."""
    enable_parallel_optimizer: bool = False
    """Shard optimizer state across data-parallel ranks (Ascend/GPU only)."""
    full_batch: bool = True
    """Semi/auto parallel: every rank loads the whole batch. Ignored in DATA_PARALLEL (data is sharded)."""
    search_mode: str = "sharding_propagation"
    """AUTO_PARALLEL strategy search: sharding_propagation, dynamic_programming, recursive_programming."""
    strategy_ckpt_save_file: str | None = None
    """Where semi/auto parallel writes its strategy file; None = MindSpore's default."""

    def _check(self, c: Checks) -> None:
        if c.ok("parallel_mode"):
            mode = self.parallel_mode
            if isinstance(mode, int) and not isinstance(mode, bool):
                mode = _PARALLEL_MODE_INTS.get(mode, mode)
            c.set("parallel_mode", mode.strip().upper() if isinstance(mode, str) else mode)
        c.require("parallel_mode", lambda v: v in PARALLEL_MODES,
                  f"must be one of {', '.join(PARALLEL_MODES)} (or MindFormers' 0-3)")
        c.require("search_mode", lambda v: v in _SEARCH_MODES, f"must be one of {', '.join(_SEARCH_MODES)}")
        c.require("strategy_ckpt_save_file", lambda v: v is None or bool(v), "must be a path or None")


@dataclass(frozen=True)
class ParallelConfig(TypedConfig):
    """How the model is split (MindFormers' `parallel_config`): world size = dp * mp * pp."""

    data_parallel: int = 1
    model_parallel: int = 1
    pipeline_stage: int = 1
    micro_batch_num: int = 1
    """Micro-batches per step for pipeline parallelism; >= pipeline_stage when pipeline_stage > 1."""
    optimizer_shard: bool = False
    vocab_emb_dp: bool = True
    gradient_aggregation_group: int = 4
    use_seq_parallel: bool = False
    micro_batch_interleave_num: int = 1

    def _check(self, c: Checks) -> None:
        for name in ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num",
                     "gradient_aggregation_group", "micro_batch_interleave_num"):
            c.require(name, lambda v: v >= 1, "must be a positive integer (>= 1)")
        if (c.ok("pipeline_stage", "micro_batch_num") and self.pipeline_stage > 1
                and self.micro_batch_num < self.pipeline_stage):
            c.problem(f"micro_batch_num={self.micro_batch_num}: must be >= pipeline_stage={self.pipeline_stage} "
                      "when pipeline parallelism is on")
        if c.ok("use_seq_parallel", "model_parallel") and self.use_seq_parallel and self.model_parallel == 1:
            c.problem("use_seq_parallel=True: sequence parallelism needs model_parallel > 1")

    @property
    def world_size(self) -> int:
        """Processes (devices) this layout needs: data_parallel * model_parallel * pipeline_stage."""
        return self.data_parallel * self.model_parallel * self.pipeline_stage


# ----------------------------------------------------------------------------------------------
# What this machine and this device can do
# ----------------------------------------------------------------------------------------------

def device_unavailable_reason(target: str) -> str | None:
    """None if `target` can be used here, else why not. Conservative and fast: checks device files
    first (/dev/davinci* for Ascend, /dev/nvidia* for GPU) and only then asks MindSpore."""
    target = _normalise_target(target)
    if target == "CPU":
        return None
    if target not in DEVICE_TARGETS:
        return f"unknown device target {target!r} (valid: {', '.join(DEVICE_TARGETS)})"
    pattern = "/dev/davinci[0-9]*" if target == "Ascend" else "/dev/nvidia[0-9]*"
    if not glob.glob(pattern):
        return f"no {target} device on this machine (no {pattern} device files)"
    try:
        import mindspore.hal as hal
        if hal.is_available(target):
            return None
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return f"MindSpore could not query {target}: {e}"
    return f"this MindSpore installation cannot use {target} (it was built for another device)"


def device_available(target: str) -> bool:
    """Whether `target` ("CPU", "GPU", "Ascend") can be used in this process. CPU: always."""
    return device_unavailable_reason(target) is None


def cluster_env() -> dict[str, str]:
    """The launcher variables (MindSpore dynamic cluster, rank table, OpenMPI) set in this process."""
    return {k: os.environ[k] for k in _CLUSTER_VARS if k in os.environ}


def _launched(env: dict[str, str], target: str) -> bool:
    if "MS_ROLE" in env or "OMPI_COMM_WORLD_RANK" in env:
        return True
    return target != "CPU" and "RANK_TABLE_FILE" in env  # rank tables need HCCL: on CPU RANK_TABLE_FILE without the dynamic cluster fails


def _expected_world(env: dict[str, str]) -> int | None:
    for var in ("MS_WORKER_NUM", "RANK_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return None


def check_parallel_supported(parallel_config: ParallelConfig, device_target: str,
                             parallel: ParallelContextConfig | None = None) -> list[str]:
    """Problems with running this layout on `device_target`; empty when it can run.
    On CPU only data parallelism exists, so model/pipeline/sequence parallelism, optimizer sharding
    and micro-batch interleaving are refused (they need Ascend)."""
    if _normalise_target(device_target) != "CPU":
        return []
    why = ("needs Ascend (or GPU): on CPU MindSpore runs only data parallelism (semi_auto/auto parallel "
           "fail there with 'Invalid communication backend')")
    pc, problems = parallel_config, []
    if pc.model_parallel > 1:
        problems.append(f"parallel_config.model_parallel={pc.model_parallel}: model parallelism {why}; "
                        "set model_parallel: 1 and scale with data_parallel, or run on an Ascend machine")
    if pc.pipeline_stage > 1:
        problems.append(f"parallel_config.pipeline_stage={pc.pipeline_stage}: pipeline parallelism {why}; "
                        "set pipeline_stage: 1, or run on an Ascend machine")
    if pc.use_seq_parallel:
        problems.append(f"parallel_config.use_seq_parallel=True: sequence parallelism {why}; set it to false")
    if pc.micro_batch_interleave_num > 1:
        problems.append(f"parallel_config.micro_batch_interleave_num={pc.micro_batch_interleave_num}: "
                        f"micro-batch interleaving {why}; set it to 1")
    if pc.optimizer_shard or (parallel is not None and parallel.enable_parallel_optimizer):
        name = ("parallel_config.optimizer_shard" if pc.optimizer_shard
                else "parallel.enable_parallel_optimizer")
        problems.append(f"{name}=True: optimizer sharding needs Ascend (or GPU): it uses ReduceScatter, which "
                        "MindSpore's CPU backend lacks; set it to false")
    return problems


def check_parallel_setup(use_parallel: bool, parallel: ParallelContextConfig, parallel_config: ParallelConfig,
                         device_target: str) -> list[str]:
    """Problems with the combination of use_parallel, parallel mode, layout and device (no env checks)."""
    if not use_parallel:
        if parallel_config.world_size > 1:
            return [f"parallel_config: data_parallel*model_parallel*pipeline_stage = {parallel_config.world_size} "
                    "but use_parallel=False, and a single process accepts only world size 1; set use_parallel: "
                    "true and start the job with `mftasks launch` (or msrun), or set the layout to 1/1/1"]
        return []
    problems = []
    if parallel.parallel_mode == "STAND_ALONE":
        problems.append("parallel.parallel_mode='STAND_ALONE' with use_parallel=True: every rank would train on "
                        "its own without combining gradients; set parallel_mode: DATA_PARALLEL "
                        "(or SEMI_AUTO_PARALLEL on Ascend), or use_parallel: false")
    return problems + check_parallel_supported(parallel_config, device_target, parallel)


@dataclass(frozen=True)
class ParallelPlan:
    """The auto-parallel context `init_context` will apply, after device-specific mapping."""

    parallel_mode: str
    gradients_mean: bool
    notes: list[str] = field(default_factory=list)
    """Why the plan differs from what was asked (logged as warnings)."""


def resolve_parallel_mode(parallel: ParallelContextConfig, parallel_config: ParallelConfig | None,
                          device_target: str) -> ParallelPlan:
    """Map the requested mode onto what the device runs. On CPU, SEMI_AUTO / AUTO / HYBRID with
    model_parallel = pipeline_stage = 1 is plain data parallelism: DATA_PARALLEL, gradients_mean=True."""
    mode, mean = parallel.parallel_mode, parallel.gradients_mean
    pc = parallel_config or ParallelConfig()
    split = pc.model_parallel > 1 or pc.pipeline_stage > 1
    if _normalise_target(device_target) == "CPU" and mode in ("SEMI_AUTO_PARALLEL", "AUTO_PARALLEL",
                                                              "HYBRID_PARALLEL") and not split:
        note = (f"parallel_mode {mode} with model_parallel=1 and pipeline_stage=1 is data parallelism; "
                "MindSpore runs only DATA_PARALLEL on CPU, so using DATA_PARALLEL with gradients_mean=True")
        return ParallelPlan("DATA_PARALLEL", True, [note])
    return ParallelPlan(mode, mean, [])


# ----------------------------------------------------------------------------------------------
# init_context
# ----------------------------------------------------------------------------------------------

def init_context(use_parallel: bool = False, context_config: ContextConfig | None = None,
                 parallel_config: ParallelContextConfig | None = None, *,
                 parallel_layout: ParallelConfig | None = None) -> tuple[int, int]:
    """Apply the configuration to MindSpore and return `(rank_id, device_num)`.

    `parallel_config` is MindFormers' ParallelContextConfig (same argument name as MindFormers);
    `parallel_layout` (the run's `parallel_config:` section, dp/mp/pp) lets the CPU mapping and the
    world-size checks see the layout. Without use_parallel returns (0, 1); safe to call repeatedly.
    Raises ConfigError for an impossible setup, DeviceError when the device is not here.
    """
    ctx = context_config or ContextConfig()
    par = parallel_config or ParallelContextConfig()
    layout = parallel_layout or ParallelConfig()
    env = cluster_env()
    problems = check_parallel_setup(use_parallel, par, layout, ctx.device_target)
    if use_parallel:
        problems += _launch_problems(env, ctx.device_target, parallel_layout)
    ConfigError.raise_if(problems, where="init_context")
    reason = device_unavailable_reason(ctx.device_target)
    if reason:
        raise DeviceError(
            f"device_target={ctx.device_target!r} (set in ContextConfig.device_target, YAML context.device_target) "
            f"is not available: {reason}. Fix: use device_target=\"CPU\", or run on a machine with "
            f"{ctx.device_target} devices and the MindSpore {ctx.device_target} package")
    _apply_context(ctx, env if use_parallel else {})
    if not use_parallel:
        if "MS_ROLE" in env:
            logger.warning("started by a parallel launcher (MS_ROLE=%s) but use_parallel=False: this process "
                           "trains alone, without the other ranks", env["MS_ROLE"])
        return 0, 1
    return _init_parallel(par, parallel_layout, ctx.device_target)


def _launch_problems(env: dict[str, str], target: str, layout: ParallelConfig | None) -> list[str]:
    if not _launched(env, target):
        why = ("RANK_TABLE_FILE is set, but on CPU MindSpore needs its dynamic cluster (MS_ROLE, "
               "MS_WORKER_NUM, ...)" if "RANK_TABLE_FILE" in env else
               "this process was not started by a launcher (none of MS_ROLE, MS_WORKER_NUM, RANK_TABLE_FILE "
               "is set)")
        return [f"use_parallel=True: {why}; start the job with `mftasks launch` (or msrun --worker_num=N), "
                "or set use_parallel=False: a single process accepts only world size 1"]
    expected = _expected_world(env)
    if layout is not None and expected is not None and layout.world_size != expected:
        return [f"parallel_config: data_parallel*model_parallel*pipeline_stage = {layout.data_parallel}*"
                f"{layout.model_parallel}*{layout.pipeline_stage} = {layout.world_size}, but the launcher "
                f"started {expected} processes; make them equal (e.g. data_parallel: "
                f"{max(1, expected // (layout.model_parallel * layout.pipeline_stage))})"]
    return []


def _apply_context(ctx: ContextConfig, env: dict[str, str]) -> None:
    import mindspore as ms

    device_id = ctx.device_id
    if ctx.device_target != "CPU" and env.get("DEVICE_ID", "").isdigit():
        device_id = int(env["DEVICE_ID"])  # the launcher's local rank wins in a cluster (as in MindFormers)
    if device_id is None:
        ms.set_device(ctx.device_target)
    else:
        ms.set_device(ctx.device_target, device_id)
    ms.set_context(mode=ctx.mode)
    threads = ctx.runtime_num_threads or (_CPU_THREADS if ctx.device_target == "CPU" else None)
    if threads:
        ms.set_context(runtime_num_threads=threads)
    if ctx.max_device_memory and ctx.device_target != "CPU":
        ms.runtime.set_memory(max_size=ctx.max_device_memory)
    if ctx.save_graphs:
        ms.set_context(save_graphs=True, save_graphs_path=ctx.save_graphs_path)


def _init_parallel(par: ParallelContextConfig, layout: ParallelConfig | None, target: str) -> tuple[int, int]:
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init
    from mindspore.communication.management import GlobalComm

    plan = resolve_parallel_mode(par, layout, target)
    for note in plan.notes:
        logger.warning(note)
    if not GlobalComm.INITED:
        init()
    rank, size = get_rank(), get_group_size()
    if layout is not None and layout.world_size != size:
        raise ConfigError([f"parallel_config: data_parallel*model_parallel*pipeline_stage = {layout.world_size} "
                           f"but the cluster has {size} ranks; make them equal"], where="init_context")
    kwargs = dict(parallel_mode=plan.parallel_mode.lower(), gradients_mean=plan.gradients_mean, device_num=size)
    if plan.parallel_mode in ("SEMI_AUTO_PARALLEL", "AUTO_PARALLEL"):
        kwargs.update(full_batch=par.full_batch, enable_parallel_optimizer=par.enable_parallel_optimizer)
        if par.strategy_ckpt_save_file:
            kwargs.update(strategy_ckpt_save_file=par.strategy_ckpt_save_file)
        if plan.parallel_mode == "AUTO_PARALLEL":
            kwargs.update(search_mode=par.search_mode)
    elif par.enable_parallel_optimizer:
        kwargs.update(enable_parallel_optimizer=True)
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(**kwargs)
    logger.info("rank %d of %d: %s", rank, size, kwargs)
    return rank, size
