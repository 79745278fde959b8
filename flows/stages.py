"""Single-stage flows (train, finetune, evaluate, predict) and multi-node dispatch.

Multi-node: `multi-node-train` starts one `node-launch` flow run per node through that node's work
queue (`node-<i>`, served by a worker on that node); every node-launch starts its local ranks, node 0
also MindSpore's scheduler, and all join one dynamic cluster at master_addr:master_port.  Each launch
first takes as many slots of its node's device limit (`devices-node-<i>`, see tasks.launch_ranks) as
ranks it starts there, all at once or not at all.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from pydantic import Field

from flows import tasks
from flows.pipeline import DeviceTarget, LearningRate, ModelType, Procs, RelPath, Steps
from mftasks.model.lora import PET_METHODS
from mftasks.stage import StageSpec

PetMethod = Literal[PET_METHODS]

Port = Annotated[int, Field(ge=1024, le=65535)]
Host = Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]+$", max_length=253)]
DeploymentName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+$", max_length=200,
                                      description="FLOW/DEPLOYMENT of the per-node launch")]


def _stage(name, run_mode, output_dir, model_type, nproc, **kw) -> StageSpec:
    """The stage's spec: every problem (a device this machine lacks included) is raised here, before any process."""
    return StageSpec(name=name, run_mode=run_mode, output_dir=output_dir, model_type=model_type, nproc=nproc, **kw)


@flow(name="train", log_prints=True)
def train(train_dataset: RelPath, output_dir: RelPath = "demo/stages/train", model_type: ModelType = "gpt2_small_cpu",
          nproc: Procs = 1, steps: Steps = 60, batch_size: Annotated[int, Field(ge=1)] = 8,
          learning_rate: LearningRate = 1e-3, master_port: Port = 8118, device_target: DeviceTarget = "CPU") -> dict:
    spec = _stage("train", "train", output_dir, model_type, nproc, train_dataset=train_dataset, max_steps=steps,
                  batch_size=batch_size, learning_rate=learning_rate, save_steps=max(steps // 3, 1),
                  master_port=master_port, device_target=device_target)
    return tasks.launch_stage(spec, str(Path(output_dir).parent / "work"))


@flow(name="finetune", log_prints=True)
def finetune(train_dataset: RelPath, base_checkpoint: RelPath, output_dir: RelPath = "demo/stages/lora",
             model_type: ModelType = "gpt2_small_cpu", pet_method: PetMethod = "lora", nproc: Procs = 1,
             steps: Steps = 60, batch_size: Annotated[int, Field(ge=1)] = 8, learning_rate: LearningRate = 3e-3,
             master_port: Port = 8118, device_target: DeviceTarget = "CPU") -> dict:
    spec = _stage("finetune", "finetune", output_dir, model_type, nproc, pet_method=pet_method,
                  train_dataset=train_dataset, load_checkpoint=base_checkpoint, max_steps=steps, batch_size=batch_size,
                  learning_rate=learning_rate, save_steps=max(steps // 3, 1), master_port=master_port,
                  device_target=device_target)
    return tasks.launch_stage(spec, str(Path(output_dir).parent / "work"))


@flow(name="evaluate", log_prints=True)
def evaluate(eval_dataset: RelPath, checkpoint: RelPath, model_type: ModelType = "gpt2_small_cpu",
             output_dir: RelPath = "demo/stages/eval", nproc: Procs = 1, master_port: Port = 8118,
             device_target: DeviceTarget = "CPU") -> dict:
    spec = _stage("evaluate", "eval", output_dir, model_type, nproc, eval_dataset=eval_dataset,
                  load_checkpoint=checkpoint, master_port=master_port, device_target=device_target)
    return tasks.launch_stage(spec, str(Path(output_dir).parent / "work"))["result"]


@flow(name="predict", log_prints=True)
def predict(prompts: list[Annotated[str, Field(max_length=2000)]], checkpoint: RelPath,
            model_type: ModelType = "gpt2_small_cpu", output_dir: RelPath = "demo/stages/predict",
            max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 32, master_port: Port = 8118,
            device_target: DeviceTarget = "CPU") -> list:
    spec = _stage("predict", "predict", output_dir, model_type, 1, load_checkpoint=checkpoint, predict_data=prompts,
                  max_new_tokens=max_new_tokens, master_port=master_port, device_target=device_target)
    return tasks.launch_stage(spec, str(Path(output_dir).parent / "work"))["result"]


# ---------------------------------------------------------------------------------------------- multi-node
@flow(name="node-launch", log_prints=True)
def node_launch(node_rank: Annotated[int, Field(ge=0, le=1023)], nnodes: Annotated[int, Field(ge=1, le=1024)],
                nproc_per_node: Procs, train_dataset: RelPath, output_dir: RelPath,
                model_type: ModelType = "gpt2_tiny", steps: Steps = 10, batch_size: Annotated[int, Field(ge=1)] = 4,
                master_addr: Host = "127.0.0.1", master_port: Port = 8118) -> dict:
    """This node's share of a multi-node training job: its ranks, holding its device slots meanwhile."""
    node = os.environ.get("MFTASKS_NODE", f"node-{node_rank}")
    spec = StageSpec(name=f"train_node{node_rank}", run_mode="train", output_dir=output_dir, model_type=model_type,
                     nproc=nproc_per_node, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                     train_dataset=train_dataset, max_steps=steps, batch_size=batch_size,
                     save_steps=max(steps // 2, 1), master_port=master_port)
    get_run_logger().info("node %s: rank %d of %d nodes, %d local rank(s)", node, node_rank, nnodes, nproc_per_node)
    return tasks.launch_stage(spec, str(Path(output_dir).parent / f"work-node{node_rank}"))


@flow(name="multi-node-train", log_prints=True)
def multi_node_train(nnodes: Annotated[int, Field(ge=1, le=1024)] = 2, nproc_per_node: Procs = 1,
                     train_dataset: RelPath = "demo/pipeline/data/pretrain-s64-v300",
                     output_dir: RelPath = "demo/multinode/train", model_type: ModelType = "gpt2_tiny",
                     steps: Steps = 10, batch_size: Annotated[int, Field(ge=1)] = 4,
                     master_addr: Host = "127.0.0.1", master_port: Port = 8118,
                     node_deployment: DeploymentName = "node-launch/node-launch") -> dict:
    """One node-launch per node through work queue node-<i>; all join one MindSpore dynamic cluster."""
    def one(i: int):
        run = run_deployment(node_deployment, work_queue_name=f"node-{i}", timeout=None,
                             parameters=dict(node_rank=i, nnodes=nnodes, nproc_per_node=nproc_per_node,
                                             train_dataset=train_dataset, output_dir=output_dir,
                                             model_type=model_type, steps=steps, batch_size=batch_size,
                                             master_addr=master_addr, master_port=master_port))
        return {"node": i, "flow_run": str(run.id), "state": run.state.name if run.state else None}

    with ThreadPoolExecutor(max_workers=nnodes) as pool:
        nodes = list(pool.map(one, range(nnodes)))
    failed = [n for n in nodes if n["state"] != "Completed"]
    if failed:
        raise RuntimeError(f"node launches did not complete: {failed}")
    return {"nodes": nodes, "output_dir": output_dir}
