"""The pipeline schedules (Megatron's `pipeline_parallel/schedules.py`): one rank's compiled stage and the
order in which micro-batches go through the stages, driven from Python.

Schedule: GPipe ("all forwards, then all backwards"; Megatron's pipelining without interleaving written the
GPipe way), chosen over 1F1B for its simple, deadlock-free order with AllReduce-as-send: every neighbour
pair exchanges its micro-batches in the same order, forward then backward.  Each stage compiles (GRAPH
mode, once per shape):
- not the last stage: `forward` (inputs -> hidden) and `backward` (inputs, d hidden -> d inputs, parameter
  grads via GradOperation with sens_param).  The backward recomputes the stage's forward, so a stage keeps
  only its micro-batches' inputs (activation recompute per stage; the bubble is (pp - 1) / (M + pp - 1)
  of the step plus that recompute).  Hence dropout must be 0 with pp > 1 (a recomputed forward draws new
  masks); `mftasks.parallel.step.step_problems` refuses it.
- the last stage: loss and all gradients in one graph per micro-batch.
With pp = 1 the micro-batches are plain gradient accumulation (`forward_backward_no_pipelining`);
`forward_only` is the evaluation pass.

CPU-tested (pp2, mp2 x pp2 against one process); Ascend/GPU untested (Send/Receive could replace the
AllReduce-as-send there).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from mftasks.model.gpt2 import GPT2LMHeadModel

from .groups import ParallelState
from .mappings import PipeTransfer

__all__ = [
    "MicroBatch", "PipelineStage", "StageEval", "StageForward", "StageLoss", "forward_backward_no_pipelining",
    "forward_backward_pipelining_without_interleaving", "forward_only",
]


def _embed_or_pass(model: GPT2LMHeadModel, first: bool, inp):
    return model.transformer.embed(inp[:, :-1]) if first else inp  # first stage: samples of T + 1 tokens


class StageForward(nn.Cell):
    """A non-last stage: input_ids (B, T+1) on the first stage, else hidden (B, T, C) -> hidden (B, T, C)."""

    def __init__(self, model: GPT2LMHeadModel, first: bool):
        super().__init__(auto_prefix=False)
        self.model, self.first = model, first

    def construct(self, inp):
        return self.model.transformer.blocks(_embed_or_pass(self.model, self.first, inp))


class StageLoss(nn.Cell):
    """The last stage: (input, input_ids, attention_mask, scale) -> scale * sum of the masked token losses."""

    def __init__(self, model: GPT2LMHeadModel, first: bool):
        super().__init__(auto_prefix=False)
        self.model, self.first = model, first

    def construct(self, inp, input_ids, attention_mask, scale):
        x = self.model.transformer.blocks(_embed_or_pass(self.model, self.first, inp))
        nll = self.model.token_nll(x, input_ids[:, 1:])
        return (nll * attention_mask[:, 1:].astype(ms.float32)).sum() * scale


class StageEval(nn.Cell):
    """The last stage, evaluating: (input, input_ids, attention_mask) -> (sum of masked token losses, tokens)."""

    def __init__(self, model: GPT2LMHeadModel, first: bool):
        super().__init__(auto_prefix=False)
        self.model, self.first = model, first

    def construct(self, inp, input_ids, attention_mask):
        x = self.model.transformer.blocks(_embed_or_pass(self.model, self.first, inp))
        mask = attention_mask[:, 1:].astype(ms.float32)
        return (self.model.token_nll(x, input_ids[:, 1:]) * mask).sum(), mask.sum()


class _LossAndGrads(nn.Cell):
    def __init__(self, net, weights, input_grad: bool):
        super().__init__(auto_prefix=False)
        self.net, self.weights = net, weights
        self.grad = ops.GradOperation(get_all=input_grad, get_by_list=True)

    def construct(self, inp, input_ids, attention_mask, scale):
        loss = self.net(inp, input_ids, attention_mask, scale)
        return loss, self.grad(self.net, self.weights)(inp, input_ids, attention_mask, scale)


class _StageBackward(nn.Cell):
    def __init__(self, net, weights, input_grad: bool):
        super().__init__(auto_prefix=False)
        self.net, self.weights = net, weights
        self.grad = ops.GradOperation(get_all=input_grad, get_by_list=True, sens_param=True)

    def construct(self, inp, d_out):
        return self.grad(self.net, self.weights)(inp, d_out)


class PipelineStage:
    """This rank's compiled stage: its graphs and its transfers to the neighbouring stages."""

    def __init__(self, model: GPT2LMHeadModel, state: ParallelState):
        place = state.place
        self.first, self.last = place.is_first_stage, place.is_last_stage
        self.hidden = model.config.n_embd
        self.weights = ms.ParameterTuple(model.trainable_params())
        if self.last:  # (cells compile on their first call: an evaluation-only stage never compiles the grads)
            self.loss_and_grads = _LossAndGrads(StageLoss(model, self.first), self.weights, not self.first)
            self.eval_loss = StageEval(model, self.first)
        else:
            self.forward = StageForward(model, self.first)
            self.backward = _StageBackward(self.forward, self.weights, not self.first)
        self.to_next = PipeTransfer(state.next_stage_group) if state.next_stage_group else None
        self.to_prev = PipeTransfer(state.prev_stage_group) if state.prev_stage_group else None

    def hidden_shape(self, input_ids: ms.Tensor) -> tuple[int, int, int]:
        B, T1 = input_ids.shape
        return B, T1 - 1, self.hidden


MicroBatch = tuple[ms.Tensor, ms.Tensor]  # (input_ids, attention_mask), int32 (b, T + 1) each


def _add(acc, grads):
    return tuple(grads) if acc is None else tuple(a + g for a, g in zip(acc, grads))


def forward_backward_no_pipelining(stage: PipelineStage, micro_batches: list[MicroBatch], scale: ms.Tensor):
    """One stage holds the whole model: (sum of scaled micro-batch losses, gradients summed over them)."""
    loss, acc = 0.0, None
    for ids, mask in micro_batches:
        mb_loss, grads = stage.loss_and_grads(ids, ids, mask, scale)
        loss, acc = loss + float(mb_loss.asnumpy()), _add(acc, grads)
    return loss, acc


def forward_backward_pipelining_without_interleaving(stage: PipelineStage, micro_batches: list[MicroBatch],
                                                     scale: ms.Tensor):
    """GPipe over the stages: every micro-batch forward (receiving from / sending to the neighbours), then
    every backward in the same order.  Returns (this stage's sum of scaled losses: 0 unless last, grads)."""
    loss, acc, saved, d_inputs = 0.0, None, [], []
    for ids, mask in micro_batches:
        inp = ids if stage.first else stage.to_prev.recv(stage.hidden_shape(ids))
        if stage.last:
            mb_loss, (in_grads, grads) = stage.loss_and_grads(inp, ids, mask, scale)
            loss, acc = loss + float(mb_loss.asnumpy()), _add(acc, grads)
            d_inputs.append(in_grads[0])
        else:
            stage.to_next.send(stage.forward(inp))
            saved.append(inp)
    for i, (ids, _) in enumerate(micro_batches):
        if not stage.last:
            out = stage.backward(saved[i], stage.to_next.recv(stage.hidden_shape(ids)))
            grads = out if stage.first else out[1]
            acc = _add(acc, grads)
            if not stage.first:
                d_inputs.append(out[0][0])
        if not stage.first:
            stage.to_prev.send(d_inputs[i])
    return loss, acc


def forward_only(stage: PipelineStage, micro_batches: list[MicroBatch]) -> tuple[float, float]:
    """Every micro-batch forward through the stages, no backward (evaluation): this stage's (sum of masked
    token losses, label tokens), both 0 unless it is the last stage."""
    loss = tokens = 0.0
    for ids, mask in micro_batches:
        inp = ids if stage.first else stage.to_prev.recv(stage.hidden_shape(ids))
        if stage.last:
            mb_loss, mb_tokens = stage.eval_loss(inp, ids, mask)
            loss, tokens = loss + float(mb_loss.asnumpy()), tokens + float(mb_tokens.asnumpy())
        else:
            stage.to_next.send(stage.forward(inp))
    return loss, tokens
