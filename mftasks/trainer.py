"""The MindFormers `Trainer` high-level interface for the GPT-2 family, on MindSpore.

    from mftasks import Trainer, TrainingArguments
    task = Trainer(task="text_generation", model="gpt2", pet_method="lora", args=TrainingArguments(...),
                   train_dataset="./train", eval_dataset="./eval")
    task.train(); task.evaluate(); task.finetune(); task.predict(input_data="hello!")

Datasets are folders made by `mftasks data prepare`; the model's vocabulary follows the dataset's
tokenizer.  Every stage writes MindFormers' layout under `args.output_dir` (see `checkpoint` and
`progress`), and later stages find what earlier ones wrote through checkpoint manifests.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

from . import checkpoint as ckpt
from . import data as datasets
from . import distributed, inference, training_run, weights
from . import output_dir as out_dir
from .checkpoint import PREFIX
from .context import ParallelConfig
from .distributed import rank_and_world
from .errors import ConfigError, DataError
from .files import disk_full_as_error, remove_stale_temporaries
from .training_args import TrainingArguments
from .training_run import Run, TrainResult

TASKS = ("text_generation",)


class Trainer:
    """MindFormers-compatible Trainer: train, finetune (full or LoRA), evaluate, predict."""

    def __init__(self, task: str = "text_generation", model=None, pet_method: str | None = "", args=None,
                 train_dataset=None, eval_dataset=None, **kwargs):
        from .model.lora import PET_METHODS

        problems = []
        if kwargs:
            problems.append(f"unknown argument(s) {sorted(kwargs)}; Trainer takes task, model, pet_method, args, "
                            "train_dataset, eval_dataset")
        if task not in TASKS:
            problems.append(f"task={task!r} is not supported; valid tasks: {', '.join(TASKS)}")
        pet_method = pet_method or ""
        if pet_method not in PET_METHODS:
            problems.append(f"pet_method={pet_method!r} is not supported; valid: '' (full) or 'lora'")
        model = "gpt2" if model is None else model
        problems.extend(weights.model_problems(model))
        try:
            self.args = _training_args(args)
        except ConfigError as exc:
            problems.extend(exc.problems)
            self.args = None
        roots = {}  # a split folder (DATA/train, the guide's way) stands for its dataset DATA
        for name, value, split in (("train_dataset", train_dataset, "train"), ("eval_dataset", eval_dataset, "eval")):
            if value is not None and not isinstance(value, (str, Path)):
                problems.append(f"{name} must be the path of a folder made by `mftasks data prepare`, "
                                f"not {type(value).__name__}")
            elif value is not None:
                try:
                    roots[name] = str(datasets.dataset_root(value, split))
                except DataError as exc:
                    problems.append(f"{name}: {exc}")
        if self.args is not None:
            problems.extend(out_dir.problems(self.args.output_dir, [v for v in (train_dataset, eval_dataset)
                                                                    if isinstance(v, (str, Path))]))
        ConfigError.raise_if(problems, where="Trainer")
        self.task = task
        self.model = model
        self.choice = weights.ModelChoice.of(model)  # the model, resolved once
        self.pet_method = pet_method
        self.train_dataset, self.eval_dataset = roots.get("train_dataset"), roots.get("eval_dataset")
        self.parallel_config = ParallelConfig()
        self.log = logging.getLogger("mftasks.trainer")

    # ------------------------------------------------------------------------------------------ public API
    def set_parallel_config(self, data_parallel: int = 1, model_parallel: int = 1, pipeline_stage: int = 1,
                            micro_batch_num: int = 1, optimizer_shard: bool = False, vocab_emb_dp: bool = True,
                            **kwargs) -> None:
        """How the model is split across devices; validated against this process's world size and device."""
        layout = ParallelConfig.from_dict(dict(data_parallel=data_parallel, model_parallel=model_parallel,
                                               pipeline_stage=pipeline_stage, micro_batch_num=micro_batch_num,
                                               optimizer_shard=optimizer_shard, vocab_emb_dp=vocab_emb_dp, **kwargs),
                                          where="Trainer.set_parallel_config")
        ConfigError.raise_if(distributed.layout_problems(layout), where="Trainer.set_parallel_config")
        self.parallel_config = layout

    def train(self, train_checkpoint=False, resume_training: bool | None = None, do_eval: bool = False,
              **kwargs) -> TrainResult:
        """Train the whole model from scratch (or from `train_checkpoint` weights), or resume a run."""
        _no_extra(kwargs, "train")
        start = None
        if train_checkpoint not in (False, None, ""):
            start = self._named_or_newest(train_checkpoint, "train_checkpoint", kind="full")
        return self._fit("train", start, resume_training, do_eval)

    def finetune(self, finetune_checkpoint=None, resume_training: bool | None = None, do_eval: bool = False,
                 **kwargs) -> TrainResult:
        """Finetune from a full checkpoint (default: the newest verified one `train()` wrote under output_dir).

        With pet_method='lora' only the LoRA weights train and only they are saved, with their base named.
        """
        _no_extra(kwargs, "finetune")
        start = self._named_or_newest(finetune_checkpoint, "finetune_checkpoint", kind="full")
        return self._fit("lora" if self.pet_method == "lora" else "finetune", start, resume_training, do_eval)

    def evaluate(self, eval_checkpoint=None, **kwargs) -> dict:
        """{'loss', 'PPL'} over the whole eval split, as a token-weighted mean.

        MindFormers averages per-batch means, which over-weights a short last batch; here every token
        counts once: loss = sum of token losses / number of tokens, PPL = exp(loss).
        """
        _no_extra(kwargs, "evaluate")
        if self.eval_dataset is None:
            raise ConfigError("evaluate() needs eval_dataset: pass Trainer(eval_dataset=FOLDER) "
                              "(a folder made by `mftasks data prepare`)", where="Trainer.evaluate")
        net, info, _ = self._inference_model(eval_checkpoint, self.eval_dataset)
        return inference.eval_loss(net, self.eval_dataset, self.args.batch_size, info)

    def predict(self, input_data=None, predict_checkpoint=None, max_length: int | None = None,
                max_new_tokens: int | None = None, do_sample: bool = False, top_k: int = 0, top_p: float = 1.0,
                temperature: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                batch_size: int | None = None, **kwargs) -> list[dict]:
        """Continue each input text: [{'text_generation_text': [prompt + continuation]}, ...], also written
        to output_dir/text_generation_result.txt (MindFormers' file, one result a line; rank 0 writes it).

        input_data: a string, a list of strings, or the path of a text file with one prompt a line.
        Without predict_checkpoint the newest verified checkpoint under output_dir is used (an adapter is
        loaded over its base), with the tokenizer its manifest names.  max_length counts the prompt
        (MindFormers' meaning); max_new_tokens counts only new tokens and wins when both are given
        (default: 32 new tokens).  batch_size inputs are generated at a time (None: all at once).  An input
        that leaves no room in the context is an error, never cut.
        """
        _no_extra(kwargs, "predict")
        texts = inference.texts_of(input_data)
        ConfigError.raise_if(inference.result_file_problems(self.args.output_dir), where="Trainer.predict")
        net, _, sp = self._inference_model(predict_checkpoint, None)
        results = inference.continue_texts(net, sp, texts, max_length, max_new_tokens, batch_size, do_sample=do_sample,
                                           top_k=top_k, top_p=top_p, temperature=temperature,
                                           repetition_penalty=repetition_penalty,
                                           seed=self.args.seed if seed is None else seed)
        if rank_and_world()[0] == 0:
            inference.write_results(self.args.output_dir, results)
        return results

    # ------------------------------------------------------------------------------------------ training
    def _fit(self, stage: str, start: ckpt.CheckpointInfo | None, resume_training, do_eval) -> TrainResult:
        import mindspore as ms

        from .model import GPT2WithLoss, num_parameters
        from .optim import build_optimizer, lr_schedule, train_step_cells
        from .progress import StepReporter, log_dir, setup_logging

        args = self.args
        if self.train_dataset is None:
            raise ConfigError(f"{stage} needs train_dataset: pass Trainer(train_dataset=FOLDER), a folder made by "
                              "`mftasks data prepare`", where="Trainer")
        resume = args.resume_training if resume_training is None else resume_training
        run = training_run.plan(args, self.choice, stage, self.train_dataset, start, resume)
        rank, world, total, per_epoch = run.rank, run.world, run.total, run.per_epoch
        k = args.gradient_accumulation_steps

        # --- checked: from here on the run writes (the old run's checkpoints go with overwrite_output_dir)
        for info in run.replaces:
            out_dir.remove_own_checkpoint(info)
        remove_stale_temporaries(ckpt.rank_dir(args.output_dir, rank))  # left by earlier killed attempts
        with disk_full_as_error(Path(args.output_dir) / "log", "the run's log"):
            log = setup_logging(args.output_dir, rank)
        for problem in run.leftovers:  # resuming: what a killed attempt of this run left (its manifest never written)
            log.warning("resuming over a file no manifest vouches for (left by a killed attempt): %s",
                        problem.split(" is not ", 1)[0])
        for warning in run.warnings:
            log.warning(warning)
        if args.max_steps == -1:  # MindFormers' and transformers' meaning: -1 = train num_train_epochs epochs
            log.info("max_steps is -1: training num_train_epochs=%d epoch(s) of %d steps = %d steps; set max_steps "
                     "to train a fixed number of steps", args.num_train_epochs, per_epoch, total)
        run = replace(run, lineage=out_dir.lineage(args.output_dir, run.manifest, run.dataset, start))

        # --- model, optimizer, train step
        ms.set_seed(args.seed)
        net = self._build_network(run.config, start)
        lrs = lr_schedule(args, total)
        optimizer = build_optimizer(net.trainable_params(), args, lrs)
        step_cell, accumulate = train_step_cells(GPT2WithLoss(net), optimizer, args.max_grad_norm, k)
        step_cell.set_train(True)
        resume_from = run.resume_from
        first = weights.restore_training_state(step_cell, resume_from) if resume_from is not None else 0
        log.info("%s: model %s (%s parameters, %s trainable), %d steps (%d per epoch), batch %d x %d rank(s) "
                 "x %d accumulation, lr %.3g %s, warmup %d, output %s%s", stage, run.config.name,
                 f"{num_parameters(net):,}", f"{num_parameters(net, trainable_only=True):,}", total, per_epoch,
                 args.batch_size, world, k,
                 args.learning_rate, args.lr_scheduler_type, args.get_warmup_steps(total), args.output_dir,
                 f", resuming at step {first} from {resume_from.path.name}" if resume_from else "")

        # --- the loop
        tokens_per_step = args.batch_size * k * world * run.config.seq_length
        logs = log_dir(args.output_dir, rank)
        with disk_full_as_error(logs, "the step log (metrics.jsonl, heartbeat.json)"):
            reporter = StepReporter(args.output_dir, rank, total, tokens_per_step, args.logging_interval, stage, log)
        # A run resumed at its last step trains nothing: it reports the checkpoint it resumed from.
        started, loss_value, last = time.perf_counter(), float("nan"), resume_from
        data_seed = args.data_seed if args.data_seed is not None else args.seed
        try:
            step = first
            while step < total:
                epoch, in_epoch = divmod(step, per_epoch)
                data = datasets.load(run.dataset, args.batch_size, shuffle=args.shuffle, seed=data_seed, rank=rank,
                                     world_size=world, skip_batches=in_epoch * k, epoch=epoch,
                                     verify=(step == first))
                it = data.create_tuple_iterator(num_epochs=1)
                while step < total and in_epoch < per_epoch:
                    for _ in range(k - 1):
                        accumulate(*next(it))
                    loss = step_cell(*next(it))
                    step += 1
                    in_epoch += 1
                    logged = step % reporter.every == 0 or step == total
                    if logged:
                        loss_value = float(loss.asnumpy())
                        _check_finite(loss_value, step)
                    with disk_full_as_error(logs, "the step log (metrics.jsonl, heartbeat.json)"):
                        reporter.step(step, loss_value if logged else None,
                                      float(lrs[min(step - 1, len(lrs) - 1)]))
                    if args.saves_at(step, total, per_epoch):
                        with disk_full_as_error(ckpt.rank_dir(args.output_dir, rank), f"the step {step} checkpoint"):
                            last = self._save(run, step_cell, net, step, loss_value)
                    if do_eval and self._eval_due(step, in_epoch == per_epoch, per_epoch):
                        self._eval_during_training(net, log)
        finally:
            try:
                reporter.close()
            except OSError:  # the buffered metrics line could not be written: the run already failed
                pass
        seconds = time.perf_counter() - started
        done = total - first
        log.info("%s finished: %d steps in %.1fs, final loss %.4f, checkpoint %s", stage, done, seconds,
                 loss_value, last.path if last else "-")
        return TrainResult(stage, done, first, loss_value, last.path if last else None, seconds,
                           done * tokens_per_step / seconds if seconds > 0 else 0.0)

    def _build_network(self, cfg, start: ckpt.CheckpointInfo | None):
        from .model import GPT2LMHeadModel, LoraConfig, apply_lora, mark_only_lora_as_trainable

        net = self.choice.network if self.choice.network is not None else GPT2LMHeadModel(cfg)
        if start is not None:
            weights.load_weights(net, weights.full_weights(start), start.path)
        if self.pet_method == "lora":
            apply_lora(net, LoraConfig.from_model_config(cfg))
            mark_only_lora_as_trainable(net)
        return net

    def _save(self, run: Run, step_cell, net, step: int, loss: float) -> ckpt.CheckpointInfo:
        epoch, in_epoch = divmod(step - 1, run.per_epoch)
        lora = run.stage == "lora"
        frozen = {p.name for p in net.get_parameters() if not p.requires_grad} if lora else set()
        body = {"prefix": PREFIX[run.stage], "stage": run.stage, "kind": "lora_adapter" if lora else "full",
                "global_step": step, "world_size": run.world, "loss": loss, "model_config": run.config.to_dict(),
                "pet_method": self.pet_method, "training_args": self.args.to_dict(), **run.lineage}
        if lora:
            body["lora_config"] = net.lora_config.to_dict()
            body["base"] = run.start.reference()
        return ckpt.save(step_cell, self.args.output_dir, run.rank, PREFIX[run.stage], epoch + 1, in_epoch + 1, body,
                         choice_func=(lambda name: name not in frozen) if lora else None,
                         save_total_limit=self.args.save_total_limit)

    def _eval_due(self, step, epoch_end, per_epoch) -> bool:
        a = self.args
        if a.eval_step_interval and a.eval_step_interval > 0 and step % a.eval_step_interval == 0:
            return True
        return epoch_end and a.eval_epoch_interval > 0 and (step // per_epoch) % a.eval_epoch_interval == 0

    def _eval_during_training(self, net, log) -> None:
        if self.eval_dataset is None:
            log.warning("do_eval=True but no eval_dataset was given; skipping evaluation")
            return
        metrics = inference.eval_loss(net, self.eval_dataset, self.args.batch_size, None)
        log.info("eval: loss %.4f PPL %.2f", metrics["loss"], metrics["PPL"])

    # ------------------------------------------------------------------------------------------ evaluate, predict
    def _inference_model(self, checkpoint, dataset: str | None):
        """(network with weights loaded, checkpoint info or None, tokenizer) for evaluate/predict."""
        from .data import tokenizer as tok
        from .model import GPT2LMHeadModel
        from .progress import setup_logging

        with disk_full_as_error(Path(self.args.output_dir) / "log", "the run's log"):
            setup_logging(self.args.output_dir, rank_and_world()[0])
        if checkpoint is False:
            if dataset is None:
                raise ConfigError("predict needs a checkpoint (its manifest names the tokenizer)", where="Trainer")
            import mindspore as ms

            manifest = datasets.read_manifest(dataset)
            cfg = self.choice.config_for(manifest, f"eval_dataset {dataset}")
            ms.set_seed(self.args.seed)
            net = self.choice.network if self.choice.network is not None else GPT2LMHeadModel(cfg)
            return net, None, tok.load(Path(dataset) / manifest["tokenizer"]["file"])
        info = self._named_or_newest(checkpoint, "checkpoint", kind=None)
        purpose = "evaluate" if dataset is not None else "predict"
        needed = {"kind": "full or lora_adapter", "model_config": "the model's shape"}
        if dataset is None:
            needed["tokenizer"] = "the tokenizer its weights were trained with, to encode the prompts"
        weights.require(info, needed, purpose)
        self.choice.check_matches(info)
        net = weights.network_of(info)
        tokenizer = weights.tokenizer_file(info, dataset)  # None: evaluate uses the dataset's token ids as they are
        return net, info, tok.load(tokenizer) if tokenizer is not None else None

    # ------------------------------------------------------------------------------------------ helpers
    def _named_or_newest(self, value, what: str, kind: str | None) -> ckpt.CheckpointInfo:
        return ckpt.named_or_newest(value, what, kind, self.args.output_dir, rank_and_world()[0])


# ---------------------------------------------------------------------------------------------- free helpers
def _training_args(args) -> TrainingArguments:
    if args is None:
        return TrainingArguments()
    if isinstance(args, TrainingArguments):
        return args
    if isinstance(args, dict):
        return TrainingArguments.from_dict(args, where="Trainer(args=dict)")
    if isinstance(args, (str, Path)):
        from .run_config import load_run_config

        return load_run_config(args).training
    raise ConfigError(f"args={type(args).__name__} must be TrainingArguments, a dict or a YAML path", where="Trainer")


def _no_extra(kwargs: dict, method: str) -> None:
    if kwargs:
        raise ConfigError(f"unknown argument(s) {sorted(kwargs)}", where=f"Trainer.{method}")


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}: training diverged; lower learning_rate "
                                 "or check the data")
