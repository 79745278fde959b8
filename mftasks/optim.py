"""Learning-rate schedules, the AdamW optimizer and the compiled train-step cells."""
from __future__ import annotations

import math

import numpy as np
from mindspore import ops

from .training_args import TrainingArguments


def lr_schedule(args: TrainingArguments, total_steps: int) -> np.ndarray:
    """Learning rate for each optimizer step 0..total_steps-1 (float32), warmup then decay."""
    warmup = args.get_warmup_steps(total_steps)
    peak, end = args.learning_rate, args.lr_end
    lrs = np.empty(max(total_steps, 1), dtype=np.float32)
    decay_steps = max(total_steps - warmup, 1)
    for step in range(len(lrs)):
        if step < warmup:
            lrs[step] = peak * (step + 1) / warmup
            continue
        progress = (step - warmup) / decay_steps
        kind = args.lr_scheduler_type
        if kind == "linear":
            lrs[step] = end + (peak - end) * (1.0 - progress)
        elif kind == "cosine":
            lrs[step] = end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif kind == "polynomial":
            lrs[step] = end + (peak - end) * (1.0 - progress) ** 2
        else:  # constant, constant_with_warmup
            lrs[step] = peak
    return lrs


def build_optimizer(params, args: TrainingArguments, lrs: np.ndarray):
    """AdamWeightDecay (MindFormers' default); no decay on biases and LayerNorm parameters."""
    import mindspore as ms
    from mindspore import nn

    params = list(params)
    decay = [p for p in params if len(p.shape) >= 2]
    no_decay = [p for p in params if len(p.shape) < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"order_params": params}]
    groups = [g for g in groups if "order_params" in g or g["params"]]
    return nn.AdamWeightDecay(groups, learning_rate=ms.Tensor(lrs), beta1=args.adam_beta1, beta2=args.adam_beta2,
                              eps=args.adam_epsilon)


def train_step_cells(loss_net, optimizer, max_grad_norm: float | None, accumulation_steps: int):
    """(step, accumulate): `step` applies the optimizer; `accumulate` (None unless accumulating) only adds grads.

    Without accumulation `step` is nn.TrainOneStepCell plus global-norm clipping (GRAPH mode, the
    fastest path measured here).  With accumulation, the Python loop calls `accumulate` k-1 times and
    `step` once; gradients are averaged over the k micro-batches before clipping.
    """
    from mindspore import nn

    class TrainStep(nn.TrainOneStepCell):
        def __init__(self, network, opt, clip, k, buffers):
            super().__init__(network, opt)
            self.clip = clip is not None and clip > 0
            self.max_norm = float(clip or 1.0)
            self.k = float(k)
            self.buffers = buffers

        def construct(self, input_ids, attention_mask):
            loss = self.network(input_ids, attention_mask)
            grads = self.grad_no_sens(self.network, self.weights)(input_ids, attention_mask)
            if self.buffers is not None:
                grads = _drain(self.buffers, grads, self.k)
            grads = self.grad_reducer(grads)
            if self.clip:
                grads = ops.clip_by_global_norm(grads, self.max_norm)
            return ops.depend(loss, self.optimizer(grads))

    class Accumulate(nn.Cell):
        def __init__(self, network, weights, buffers):
            super().__init__(auto_prefix=False)
            self.network = network
            self.weights = weights
            self.buffers = buffers
            self.grad = ops.GradOperation(get_by_list=True, sens_param=False)

        def construct(self, input_ids, attention_mask):
            loss = self.network(input_ids, attention_mask)
            grads = self.grad(self.network, self.weights)(input_ids, attention_mask)
            out = loss
            for buf, g in zip(self.buffers, grads):
                out = ops.depend(out, ops.assign_add(buf, g))
            return out

    weights = optimizer.parameters
    if accumulation_steps <= 1:
        return TrainStep(loss_net, optimizer, max_grad_norm, 1, None), None
    buffers = weights.clone(prefix="accu_grads", init="zeros")
    step = TrainStep(loss_net, optimizer, max_grad_norm, accumulation_steps, buffers)
    return step, Accumulate(loss_net, weights, buffers)


def _drain(buffers, grads, k):
    """(buffer + grad) / k for each parameter, and zero the buffers (graph-mode helper)."""
    out = []
    for buf, g in zip(buffers, grads):
        total = (buf + g) / k
        out.append(ops.depend(total, ops.assign(buf, ops.zeros_like(buf))))
    return tuple(out)
