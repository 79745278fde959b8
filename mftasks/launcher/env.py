"""The environment of each process, per mode.

Every process inherits the launcher's environment minus the variables the launcher owns (an outer
launch's RANK_ID must not leak in), plus `spec.env`, plus:

- PATH with `dirname(sys.executable)` first, so a program written as `python ...` runs this
  interpreter / virtualenv (msrun starts workers with the literal `python` found on PATH, not the running interpreter);
- PYTHONUNBUFFERED=1 unless set, so a rank's output reaches its log as it is printed;
- MFTASKS_ERROR_FILE, the absolute path of the process's own error record (record.py), beside its log.

dynamic-cluster (what msrun exports; mindspore/parallel/cluster/process_entity/_api.py):
    scheduler (node 0 only): MS_ROLE=MS_SCHED MS_SCHED_HOST MS_SCHED_PORT MS_WORKER_NUM RANK_ID=0
                             RANK_SIZE [RANK_TABLE_FILE]
    worker:                  MS_ROLE=MS_WORKER MS_SCHED_HOST MS_SCHED_PORT MS_WORKER_NUM
                             MS_NODE_ID=<global rank> RANK_ID=<global rank> RANK_SIZE LOCAL_RANK DEVICE_ID
                             [RANK_TABLE_FILE]
rank-table (run_distribute_{single,multi}_node.sh, exactly):
    RANK_TABLE_FILE=<absolute path> RANK_SIZE=<world size> DEVICE_ID RANK_ID   (numbering: spec.py)
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from .record import ERROR_FILE_ENV
from .spec import OWNED_ENV, LaunchSpec, LocalRank


def base_env(spec: LaunchSpec, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if parent is None else parent)
    for key in OWNED_ENV:
        env.pop(key, None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(spec.env)
    bindir = os.path.dirname(sys.executable)
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *rest])
    return env


def _rank_table(spec: LaunchSpec) -> dict[str, str]:
    return {"RANK_TABLE_FILE": os.path.abspath(spec.rank_table)} if spec.rank_table else {}


def _cluster(spec: LaunchSpec) -> dict[str, str]:
    return {"MS_SCHED_HOST": spec.master_addr, "MS_SCHED_PORT": str(spec.master_port),
            "MS_WORKER_NUM": str(spec.world_size)}


def rank_vars(spec: LaunchSpec, lr: LocalRank) -> dict[str, str]:
    """Only the launcher's variables for one worker rank."""
    if spec.mode == "rank-table":
        return {**_rank_table(spec), "RANK_SIZE": str(spec.world_size), "DEVICE_ID": str(lr.device_id),
                "RANK_ID": str(lr.rank)}
    if spec.mode == "standalone":
        return {"RANK_ID": "0", "RANK_SIZE": "1", "LOCAL_RANK": "0", "DEVICE_ID": str(lr.device_id)}
    return {"MS_ROLE": "MS_WORKER", **_cluster(spec), "MS_NODE_ID": str(lr.rank), "RANK_ID": str(lr.rank),
            "RANK_SIZE": str(spec.world_size), "LOCAL_RANK": str(lr.local_rank),
            "DEVICE_ID": str(lr.device_id), **_rank_table(spec)}


def scheduler_vars(spec: LaunchSpec) -> dict[str, str]:
    """Only the launcher's variables for the dynamic-cluster scheduler."""
    return {"MS_ROLE": "MS_SCHED", **_cluster(spec), "RANK_ID": "0", "RANK_SIZE": str(spec.world_size),
            **_rank_table(spec)}


def rank_env(spec: LaunchSpec, lr: LocalRank, base: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(base_env(spec) if base is None else base), **rank_vars(spec, lr),
            ERROR_FILE_ENV: os.path.abspath(spec.error_file(lr.rank))}


def scheduler_env(spec: LaunchSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(base_env(spec) if base is None else base), **scheduler_vars(spec),
            ERROR_FILE_ENV: os.path.abspath(spec.error_file(None))}
