"""Multi-node dispatch on one machine: two workers act as two nodes over 127.0.0.1 (per-node queues)."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from flows import stack as st
from mftasks.data import PrepareSpec, prepare

from conftest import free_port, running_stack

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_stack(tmp_path_factory):
    workers = [{"queue": "default"}, {"queue": "node-0", "devices": 1}, {"queue": "node-1", "devices": 1}]
    with running_stack(tmp_path_factory.mktemp("prefect-mn"), workers=workers) as stack:
        yield stack


def test_two_nodes_join_one_cluster(two_node_stack, corpus_dir, tiny_dataset):
    rel = Path("build") / f"mn-{uuid.uuid4().hex[:8]}"
    try:
        data = REPO / rel / "data"
        prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(data), tokenizer=str(tiny_dataset / "tokenizer.model"),
                            seq_length=64))
        params = {"nnodes": 2, "nproc_per_node": 1, "train_dataset": str(rel / "data"),
                  "output_dir": str(rel / "train"), "model_type": "gpt2_tiny", "steps": 4, "batch_size": 2,
                  "master_port": free_port()}
        run = st.run_deployment(two_node_stack, "multi-node-train", params)
        final = st.watch(two_node_stack, run["id"], timeout=900)
        assert final["state"]["type"] == "COMPLETED", final["state"]
        # one node-launch per node, each picked up by that node's worker (work queue node-<i>)
        with two_node_stack.client() as c:
            children = c.request("POST", "/flow_runs/filter",
                                 json={"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}})
            children = children.json()
            if not children:  # run_deployment children are linked through a parent task run
                children = c.request("POST", "/flow_runs/filter",
                                     json={"flows": {"name": {"any_": ["node-launch"]}}}).json()
        queues = sorted(r["work_queue_name"] for r in children if r["state"]["type"] == "COMPLETED")
        assert queues == ["node-0", "node-1"]
        import mindspore as ms

        out = REPO / rel / "train" / "checkpoint"
        r0 = ms.load_checkpoint(str(next((out / "rank_0").glob("mindformers_rank_0-1_4.ckpt"))))
        r1 = ms.load_checkpoint(str(next((out / "rank_1").glob("mindformers_rank_1-1_4.ckpt"))))
        name = "transformer.h.0.attn.c_attn.weight"
        assert np.array_equal(r0[name].asnumpy(), r1[name].asnumpy())  # one cluster: replicas stayed identical
    finally:
        shutil.rmtree(REPO / rel, ignore_errors=True)
