"""ParallelTrainStep / ParallelEvalStep in one process (layout 1x1x1, no communication): micro-batch
accumulation, the token-weighted loss scale, the clipping and the sharded optimizer's flatten / update /
write-back give the Trainer's 1-process step."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mftasks.context import ParallelConfig
from mftasks.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent / "parallel"))
import parity_rank  # noqa: E402

STEPS = 4


def _step(pc: ParallelConfig, config=None):
    from mftasks.optim import lr_schedule
    from mftasks.parallel.groups import initialize_model_parallel
    from mftasks.parallel.model import build_rank_model
    from mftasks.parallel.optimizer import build_parallel_optimizer
    from mftasks.parallel.step import ParallelEvalStep, ParallelTrainStep

    config, args = config or parity_rank.tiny_config(), parity_rank.training_args()
    state = initialize_model_parallel(pc, 0)
    model = build_rank_model(config, state, parity_rank.initial_state(config))
    opt = build_parallel_optimizer(model, state, args, lr_schedule(args, STEPS))
    return ParallelTrainStep(model, state, opt, args.max_grad_norm), ParallelEvalStep(model, state)


@pytest.fixture(scope="module")
def reference():
    return parity_rank.reference_run(steps=STEPS)


@pytest.mark.parametrize("shard", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["adamw", "optimizer_shard"])
def test_accumulated_micro_batches_equal_the_trainer_step(reference, shard):
    ref = reference
    step, evaluate = _step(ParallelConfig(micro_batch_num=4, optimizer_shard=shard))
    losses = [step(ids, mask).loss for ids, mask in parity_rank.global_batches(STEPS)]
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-5)
    loss_sum, tokens = evaluate(*parity_rank.eval_batch())
    assert tokens == ref["eval"][1][1] and loss_sum == pytest.approx(ref["eval"][1][0], rel=1e-5)


def test_unimplemented_or_mismatched_settings_are_refused_naming_them():
    from mftasks.model.config import GPT2Config
    from mftasks.optim import build_optimizer, lr_schedule
    from mftasks.parallel.groups import ParallelState
    from mftasks.parallel.layout import place_of
    from mftasks.parallel.model import build_rank_model
    from mftasks.parallel.step import ParallelTrainStep, step_problems

    cfg, args = parity_rank.tiny_config(), parity_rank.training_args()
    with pytest.raises(ConfigError, match="micro_batch_interleave_num=2"):
        _step(ParallelConfig(micro_batch_interleave_num=2), cfg)
    sharded = ParallelState(ParallelConfig(optimizer_shard=True), place_of(ParallelConfig(), 0))
    model = build_rank_model(cfg, sharded)
    plain = build_optimizer(model.trainable_params(), args, lr_schedule(args, 2))
    with pytest.raises(ConfigError, match="optimizer_shard=True but the optimizer is a AdamWeightDecay"):
        ParallelTrainStep(model, sharded, plain)  # accepted and then ignored would be a defect
    pc = ParallelConfig(pipeline_stage=2, micro_batch_num=2)
    problems = step_problems(ParallelState(pc, place_of(pc, 0)), GPT2Config(**{**cfg.to_dict(), "dropout": 0.1}))
    assert len(problems) == 1 and problems[0].startswith("dropout=0.1")
