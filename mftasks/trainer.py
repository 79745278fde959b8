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
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import data as datasets
from . import weights
from .context import ParallelConfig, check_parallel_supported
from .errors import CheckpointError, ConfigError, DataError, DeviceError, DiskFullError
from .files import copy_durable, disk_full_as_error, overlap_problems, remove_stale_temporaries, sha256_file
from .training_args import TrainingArguments

TASKS = ("text_generation",)
PET_METHODS = ("", "lora")
PREFIX = {"train": "mindformers", "finetune": "mindformers_finetune", "lora": "mindformers_lora"}
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass
class TrainResult:
    """What a train/finetune call did (MindFormers returns None; callers may ignore this)."""

    stage: str
    steps: int
    first_step: int
    final_loss: float
    checkpoint: Path
    seconds: float
    tokens_per_second: float


class Trainer:
    """MindFormers-compatible Trainer: train, finetune (full or LoRA), evaluate, predict."""

    def __init__(self, task: str = "text_generation", model=None, pet_method: str | None = "", args=None,
                 train_dataset=None, eval_dataset=None, **kwargs):
        from .model import PRESETS, GPT2Config, GPT2LMHeadModel

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
        if isinstance(model, str) and model not in PRESETS:
            problems.append(f"model={model!r} is not a known model; valid: {', '.join(PRESETS)}")
        elif isinstance(model, dict) and model.get("model_type", "gpt2") not in PRESETS:
            problems.append(f"model_type={model.get('model_type')!r} is not a known model; valid: {', '.join(PRESETS)}")
        elif not isinstance(model, (str, dict, GPT2Config, GPT2LMHeadModel)):
            problems.append(f"model={type(model).__name__} must be a model name, a GPT2Config or a GPT2LMHeadModel")
        try:
            self.args = _training_args(args)
        except ConfigError as exc:
            problems.extend(exc.problems)
            self.args = None
        for name, value in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if value is not None and not isinstance(value, (str, Path)):
                problems.append(f"{name} must be the path of a folder made by `mftasks data prepare`, "
                                f"not {type(value).__name__}")
            elif value is not None:
                try:
                    datasets.read_manifest(value)
                except DataError as exc:
                    problems.append(f"{name}: {exc}")
        if self.args is not None:
            problems.extend(_output_dir_problems(self.args.output_dir, [v for v in (train_dataset, eval_dataset)
                                                                        if isinstance(v, (str, Path))]))
        ConfigError.raise_if(problems, where="Trainer")
        self.task = task
        self.model = model
        self.pet_method = pet_method
        self.train_dataset = str(train_dataset) if train_dataset is not None else None
        self.eval_dataset = str(eval_dataset) if eval_dataset is not None else None
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
        problems = check_parallel_supported(layout, _device_target())
        _, world = _world()
        if layout.world_size != world:
            problems.append(
                f"data_parallel * model_parallel * pipeline_stage = {layout.world_size} but this job has "
                f"{world} process(es)" + ("; a single process accepts only a world size of 1: start the ranks "
                                         "with `mftasks launch --nproc-per-node N`" if world == 1 else ""))
        ConfigError.raise_if(problems, where="Trainer.set_parallel_config")
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
        return self._evaluate_net(net, self.eval_dataset, info)

    def predict(self, input_data=None, predict_checkpoint=None, max_length: int | None = None,
                max_new_tokens: int | None = None, do_sample: bool = False, top_k: int = 0, top_p: float = 1.0,
                temperature: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                **kwargs) -> list[dict]:
        """Continue each input text: [{'text_generation_text': [prompt + continuation]}, ...].

        Without predict_checkpoint the newest verified checkpoint under output_dir is used (an adapter is
        loaded over its base), with the tokenizer its manifest names.  max_length counts the prompt
        (MindFormers' meaning); max_new_tokens counts only new tokens and wins when both are given
        (default: 32 new tokens).  An input that leaves no room in the context is an error, never cut.
        """
        from .model import generate

        _no_extra(kwargs, "predict")
        texts = [input_data] if isinstance(input_data, str) else input_data
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"input_data={input_data!r} must be a string or a non-empty list of strings",
                              where="Trainer.predict")
        net, info, sp = self._inference_model(predict_checkpoint, None)
        context = net.config.seq_length
        prompts = [sp.encode(t) or [sp.eos_id()] for t in texts]
        problems = []
        for t, p in zip(texts, prompts):
            if len(p) >= context:
                problems.append(f"input {t[:40]!r}... is {len(p)} tokens; the model's context is {context} "
                                "tokens and at least one must be left for generation: shorten the input")
        if max_new_tokens is None:
            max_new_tokens = (max_length - max(map(len, prompts))) if max_length else DEFAULT_MAX_NEW_TOKENS
        if max_new_tokens < 1:
            problems.append(f"max_length={max_length} leaves no room for new tokens after the longest input "
                            f"({max(map(len, prompts))} tokens); raise it or use max_new_tokens")
        ConfigError.raise_if(problems, where="Trainer.predict")
        new = generate(net, prompts, max_new_tokens=max_new_tokens, eos_id=sp.eos_id(), pad_id=max(sp.pad_id(), 0),
                       do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
                       repetition_penalty=repetition_penalty,
                       seed=self.args.seed if seed is None else seed)
        return [{"text_generation_text": [sp.decode(p + n)]} for p, n in zip(prompts, new)]

    # ------------------------------------------------------------------------------------------ training
    def _fit(self, stage: str, start: ckpt.CheckpointInfo | None, resume_training, do_eval) -> TrainResult:
        import mindspore as ms

        from .data.loader import batches_per_epoch
        from .optim import build_optimizer, lr_schedule, train_step_cells
        from .progress import StepReporter, log_dir, setup_logging

        args = self.args
        rank, world = _world()
        dataset = self._require_dataset("train_dataset", stage)
        manifest = datasets.read_manifest(dataset)
        _check_dataset_files(dataset, manifest)
        cfg = self._model_config(manifest, f"train_dataset {dataset}")
        if start is not None:
            weights.check_same_shape(start, cfg)
        resume = args.resume_training if resume_training is None else resume_training
        resume_from = self._resume_point(stage, rank, resume, world)
        # Refused before anything is written: weights trained on other token ids than this dataset's.
        for info, what in ((start, "the checkpoint it starts from"), (resume_from, "the checkpoint it resumes")):
            if info is not None:
                self._check_tokenizer(info, manifest, dataset, stage, what)
        self._check_start_not_deletable(stage, rank, start)
        old_run = self._check_output(stage, rank, resume_from)
        k = args.gradient_accumulation_steps
        per_epoch = batches_per_epoch(manifest["splits"]["train"]["samples"], args.batch_size, world) // k
        if per_epoch < 1:
            raise ConfigError(f"the train split of {dataset} has {manifest['splits']['train']['samples']} samples: "
                              f"too few for one step of batch_size {args.batch_size} x {world} rank(s) x "
                              f"{k} accumulation step(s); lower batch_size or add data", where="Trainer")
        total = args.max_steps if args.max_steps > 0 else per_epoch * args.num_train_epochs
        args.check_warmup(total)
        first = resume_from.global_step if resume_from is not None else 0
        planned = [ckpt.file_name(PREFIX[stage], rank, *(x + 1 for x in divmod(step - 1, per_epoch)))
                   for step in range(first + 1, total + 1) if step % args.save_steps == 0 or step == total]
        foreign = _foreign_files(ckpt.rank_dir(args.output_dir, rank), planned)
        if resume_from is None:
            ConfigError.raise_if(foreign, where="Trainer")

        # --- checked: from here on the run writes (the old run's checkpoints go with overwrite_output_dir)
        for info in old_run:
            _remove_own_checkpoint(info)
        remove_stale_temporaries(ckpt.rank_dir(args.output_dir, rank))  # left by earlier killed attempts
        with disk_full_as_error(Path(args.output_dir) / "log", "the run's log"):
            log = setup_logging(args.output_dir, rank)
        for problem in foreign:  # resuming: what a killed attempt of this run left (its manifest never written)
            log.warning("resuming over a file no manifest vouches for (left by a killed attempt): %s",
                        problem.split(" is not ", 1)[0])
        if args.max_steps == -1:  # MindFormers' and transformers' meaning: -1 = train num_train_epochs epochs
            log.info("max_steps is -1: training num_train_epochs=%d epoch(s) of %d steps = %d steps; set max_steps "
                     "to train a fixed number of steps", args.num_train_epochs, per_epoch, total)
        lineage = self._lineage(manifest, dataset, start)
        ms.set_seed(args.seed)
        net = self._build_network(cfg, start)
        lrs = lr_schedule(args, total)
        optimizer = build_optimizer(net.trainable_params(), args, lrs)
        from .model import GPT2WithLoss

        loss_net = GPT2WithLoss(net)
        step_cell, accumulate = train_step_cells(loss_net, optimizer, args.max_grad_norm, k)
        step_cell.set_train(True)
        first = 0
        if resume_from is not None:
            first = self._restore(step_cell, resume_from, log)
        log.info("%s: model %s (%s parameters, %s trainable), %d steps (%d per epoch), batch %d x %d rank(s) "
                 "x %d accumulation, lr %.3g %s, warmup %d, output %s%s", stage, cfg.name,
                 f"{_count(net):,}", f"{_count(net, True):,}", total, per_epoch, args.batch_size, world, k,
                 args.learning_rate, args.lr_scheduler_type, args.get_warmup_steps(total), args.output_dir,
                 f", resuming at step {first} from {resume_from.path.name}" if resume_from else "")

        tokens_per_step = args.batch_size * k * world * cfg.seq_length
        logs = log_dir(args.output_dir, rank)
        with disk_full_as_error(logs, "the step log (metrics.jsonl, heartbeat.json)"):
            reporter = StepReporter(args.output_dir, rank, total, tokens_per_step, args.logging_steps, stage, log)
        # A run resumed at its last step trains nothing: it reports the checkpoint it resumed from.
        started, loss_value, last = time.perf_counter(), float("nan"), resume_from
        data_seed = args.data_seed if args.data_seed is not None else args.seed
        try:
            step = first
            while step < total:
                epoch, in_epoch = divmod(step, per_epoch)
                data = datasets.load(dataset, args.batch_size, shuffle=args.shuffle, seed=data_seed, rank=rank,
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
                    if step % args.save_steps == 0 or step == total:
                        with disk_full_as_error(ckpt.rank_dir(args.output_dir, rank), f"the step {step} checkpoint"):
                            last = self._save(step_cell, net, stage, rank, world, step, per_epoch, cfg, lineage,
                                              loss_value, start)
                    if do_eval and self._eval_due(step, in_epoch == per_epoch, per_epoch):
                        self._eval_during_training(net, lineage, log)
        except DiskFullError:
            # the heartbeat's temporary (written beside heartbeat.json) must not outlive a failed write
            (logs / f".heartbeat.tmp-{os.getpid()}").unlink(missing_ok=True)
            raise
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

        net = self.model if _is_instance(self.model) else GPT2LMHeadModel(cfg)
        if start is not None:
            weights.load_weights(net, weights.full_weights(start), start.path)
        if self.pet_method == "lora":
            apply_lora(net, LoraConfig.from_model_config(cfg))
            mark_only_lora_as_trainable(net)
        return net

    def _save(self, step_cell, net, stage, rank, world, step, per_epoch, cfg, lineage, loss, start):
        epoch, in_epoch = divmod(step - 1, per_epoch)
        lora = stage == "lora"
        frozen = {p.name for p in net.get_parameters() if not p.requires_grad} if lora else set()
        body = {"prefix": PREFIX[stage], "stage": stage, "kind": "lora_adapter" if lora else "full",
                "global_step": step, "world_size": world, "loss": loss, "model_config": cfg.to_dict(),
                "pet_method": self.pet_method, "training_args": self.args.to_dict(), **lineage}
        if lora:
            body["lora_config"] = net.lora_config.to_dict()
            body["base"] = start.reference()
        return ckpt.save(step_cell, self.args.output_dir, rank, PREFIX[stage], epoch + 1, in_epoch + 1, body,
                         choice_func=(lambda name: name not in frozen) if lora else None,
                         save_total_limit=self.args.save_total_limit)

    def _restore(self, step_cell, info: ckpt.CheckpointInfo, log) -> int:
        import mindspore as ms

        params = weights.read_params(info.path)
        # The LR schedule is rebuilt from this run's arguments (a resumed run may train longer); its
        # position is global_step, which is restored.
        params.pop("learning_rate", None)
        weights.check_shapes(step_cell, params, info.path)
        missing, _ = ms.load_param_into_net(step_cell, params, strict_load=False)
        missing = [m for m in missing if m != "learning_rate"
                   and (m in {p.name for p in step_cell.trainable_params()} or "adam" in m)]
        if missing:
            raise CheckpointError(f"{info.path} lacks {len(missing)} parameter(s) of this run "
                                  f"(e.g. {missing[:3]}); it was written by another kind of run")
        return int(info.global_step)

    def _resume_point(self, stage, rank, resume, world: int = 1) -> ckpt.CheckpointInfo | None:
        if self.args.resume_from_checkpoint:
            info = ckpt.load_verified(self.args.resume_from_checkpoint)
            if info.manifest.get("prefix") != PREFIX[stage]:
                raise CheckpointError(f"resume_from_checkpoint={self.args.resume_from_checkpoint} was written by "
                                      f"{info.manifest.get('stage')!r}, not by this {stage!r} run")
            return info
        if not resume:
            return None
        folder = ckpt.rank_dir(self.args.output_dir, rank)
        info, warnings = ckpt.newest_verified(folder, prefix=PREFIX[stage])
        for w in warnings:
            logging.getLogger("mftasks").warning(w)
        if world > 1:  # every rank must resume from the same step: the newest one all of them have verified
            agreed = _all_reduce_min(info.global_step if info is not None else -1)
            if agreed >= 0 and (info is None or info.global_step != agreed):
                logging.getLogger("mftasks").warning(
                    "rank %d: newest verified checkpoint is step %s, but another rank's is step %d: resuming "
                    "every rank from step %d", rank, info.global_step if info else None, agreed, agreed)
                info = _verified_at(folder, PREFIX[stage], agreed)
            elif agreed < 0:
                info = None
        if info is None:
            where = f"{folder} (or another rank's folder)" if world > 1 else f"{folder}"
            raise CheckpointError(f"resume_training=True but {where} has no verified {stage} checkpoint to resume "
                                  "from; start without resume_training")
        return info

    def _check_output(self, stage, rank, resume_from) -> list[ckpt.CheckpointInfo]:
        """The old run's checkpoints that overwrite_output_dir will remove (removed later, once every check
        passed); ConfigError when there are some and overwrite_output_dir is off."""
        if resume_from is not None:
            return []
        existing = [i for i in ckpt.listing(ckpt.rank_dir(self.args.output_dir, rank))
                    if i.manifest.get("prefix") == PREFIX[stage]]
        if existing and not self.args.overwrite_output_dir:
            raise ConfigError(
                f"{ckpt.rank_dir(self.args.output_dir, rank)} already holds {len(existing)} {stage} checkpoint(s) "
                f"(newest {existing[-1].path.name}); pass resume_training=True to continue that run, "
                "overwrite_output_dir=True to start over, or choose another output_dir", where="Trainer")
        return existing

    def _check_start_not_deletable(self, stage, rank, start) -> None:
        """The checkpoint a run starts from must not be among the files it may delete: its own stage's
        checkpoints in its rank folder (overwrite_output_dir removes them, save_total_limit prunes them).
        A checkpoint elsewhere under output_dir (e.g. train's, for a finetune) is never touched."""
        if start is None:
            return
        own = ckpt.rank_dir(self.args.output_dir, rank).resolve()
        if start.path.resolve().parent == own and start.manifest.get("prefix") == PREFIX[stage]:
            raise ConfigError(f"output_dir {self.args.output_dir} holds the checkpoint this {stage} run starts from "
                              f"({start.path}) among the {stage} checkpoints that overwrite_output_dir and "
                              "save_total_limit delete; continue that run with resume_training=True, or write to "
                              "another output_dir", where="Trainer")

    def _check_tokenizer(self, info, manifest, dataset, stage, what) -> None:
        problem = weights.tokenizer_problem(info, manifest, dataset, "train_dataset")
        if problem:
            raise DataError(f"{stage} refused before step 1: train_dataset does not fit {what}:\n  - {problem}")
        if not info.manifest.get("tokenizer"):
            logging.getLogger("mftasks").warning(
                "checkpoint %s records no tokenizer (%s): cannot check that train_dataset %s was tokenized with "
                "the tokenizer its weights were trained with; the new checkpoints record the dataset's",
                info.path, weights._origin(info), dataset)

    def _eval_due(self, step, epoch_end, per_epoch) -> bool:
        a = self.args
        if a.eval_step_interval and a.eval_step_interval > 0 and step % a.eval_step_interval == 0:
            return True
        return epoch_end and a.eval_epoch_interval > 0 and (step // per_epoch) % a.eval_epoch_interval == 0

    def _eval_during_training(self, net, lineage, log) -> None:
        if self.eval_dataset is None:
            log.warning("do_eval=True but no eval_dataset was given; skipping evaluation")
            return
        metrics = self._evaluate_net(net, self.eval_dataset, None)
        log.info("eval: loss %.4f PPL %.2f", metrics["loss"], metrics["PPL"])

    # ------------------------------------------------------------------------------------------ evaluation
    def _evaluate_net(self, net, folder: str, info) -> dict:
        from .model import GPT2EvalLoss

        manifest = datasets.read_manifest(folder)
        weights.check_compatible(net.config, manifest, folder, info)
        rank, world = _world()
        was_training = net.training
        net.set_train(False)
        cell = GPT2EvalLoss(net)
        cell.set_train(False)
        total_loss, total_tokens = 0.0, 0.0
        batch = self.args.batch_size
        n = manifest["splits"]["eval"]["samples"]
        try:
            data = datasets.load(folder, min(batch, max(n // world, 1)), shuffle=False, rank=rank, world_size=world,
                                 split="eval", drop_remainder=False)
            for ids, mask in data.create_tuple_iterator(num_epochs=1):
                s, c = cell(ids, mask)
                total_loss += float(s.asnumpy())
                total_tokens += float(c.asnumpy())
        finally:
            net.set_train(was_training)
        if world > 1:
            total_loss, total_tokens = _all_reduce_sum([total_loss, total_tokens])
        loss = total_loss / max(total_tokens, 1.0)
        logging.getLogger("mftasks").info("evaluate: %d tokens, loss %.4f, PPL %.3f", int(total_tokens), loss,
                                          math.exp(min(loss, 700)))
        return {"loss": loss, "PPL": math.exp(min(loss, 700))}

    def _inference_model(self, checkpoint, dataset: str | None):
        """(network with weights loaded, checkpoint info or None, tokenizer) for evaluate/predict."""
        from .data import tokenizer as tok
        from .model import GPT2LMHeadModel, LoraConfig, apply_lora
        from .progress import setup_logging

        with disk_full_as_error(Path(self.args.output_dir) / "log", "the run's log"):
            setup_logging(self.args.output_dir, _world()[0])
        if checkpoint is False:
            if dataset is None:
                raise ConfigError("predict needs a checkpoint (its manifest names the tokenizer)", where="Trainer")
            import mindspore as ms

            manifest = datasets.read_manifest(dataset)
            cfg = self._model_config(manifest, f"eval_dataset {dataset}")
            ms.set_seed(self.args.seed)
            net = self.model if _is_instance(self.model) else GPT2LMHeadModel(cfg)
            return net, None, tok.load(Path(dataset) / manifest["tokenizer"]["file"])
        info = self._named_or_newest(checkpoint, "checkpoint", kind=None)
        purpose = "evaluate" if dataset is not None else "predict"
        needed = {"kind": "full or lora_adapter", "model_config": "the model's shape"}
        if dataset is None:
            needed["tokenizer"] = "the tokenizer its weights were trained with, to encode the prompts"
        weights.require(info, needed, purpose)
        cfg = weights.config_of(info)
        self._check_model_matches(cfg, info)
        net = GPT2LMHeadModel(cfg)
        if info.kind == "lora_adapter":
            base = weights.base_of(info)
            weights.load_weights(net, weights.full_weights(base), base.path)
            apply_lora(net, LoraConfig(**info.manifest["lora_config"]))
            weights.load_weights(net, weights.read_params(info.path), info.path, lora_only=True)
        else:
            weights.load_weights(net, weights.full_weights(info), info.path)
        if not info.manifest.get("tokenizer"):  # evaluate: the dataset's token ids are used as they are
            logging.getLogger("mftasks").warning(
                "checkpoint %s records no tokenizer (%s): cannot check that eval_dataset %s was tokenized with "
                "the tokenizer its weights were trained with", info.path, weights._origin(info), dataset)
            return net, info, None
        tokenizer = Path(info.manifest["tokenizer"]["path"])
        if not tokenizer.is_file() or sha256_file(tokenizer) != info.manifest["tokenizer"]["sha256"]:
            raise CheckpointError(f"{info.path}: its tokenizer {tokenizer} is missing or changed (sha256 differs "
                                  "from the manifest)")
        return net, info, tok.load(tokenizer)

    # ------------------------------------------------------------------------------------------ helpers
    def _require_dataset(self, name: str, stage: str) -> str:
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"{stage} needs {name}: pass Trainer({name}=FOLDER), a folder made by "
                              "`mftasks data prepare`", where="Trainer")
        return value

    def _named_or_newest(self, value, what: str, kind: str | None) -> ckpt.CheckpointInfo:
        rank, _ = _world()
        if value in (None, True, ""):
            folder = ckpt.rank_dir(self.args.output_dir, rank)
            info, warnings = ckpt.newest_verified(folder, kind=kind)
            for w in warnings:
                logging.getLogger("mftasks").warning(w)
            if info is None:
                need = "full-model " if kind == "full" else ""
                raise CheckpointError(f"no verified {need}checkpoint under {folder} for {what}; run train() first "
                                      f"or pass {what}=PATH")
            return info
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{what}={value!r} must be a checkpoint path", where="Trainer")
        info = ckpt.load_verified(value)
        if kind is not None and info.kind != kind:
            raise CheckpointError(f"{what}={value} is a {info.kind} checkpoint; a {kind} checkpoint is needed")
        return info

    def _model_config(self, manifest: dict, where: str):
        """The model config for a dataset: vocabulary from its tokenizer, seq_length checked against it."""
        from .model import GPT2Config

        vocab, seq = manifest["tokenizer"]["vocab_size"], manifest["seq_length"]
        if isinstance(self.model, str):
            cfg = GPT2Config.from_name(self.model, vocab_size=vocab)
        elif isinstance(self.model, dict):
            overrides = {k: v for k, v in self.model.items() if k != "model_type"}
            cfg = GPT2Config.from_name(self.model.get("model_type", "gpt2"), vocab_size=vocab, **overrides)
        else:
            cfg = self.model.config if _is_instance(self.model) else self.model
            if cfg.vocab_size != vocab:
                raise ConfigError(f"the model's vocab_size is {cfg.vocab_size} but {where} was tokenized with "
                                  f"vocab_size {vocab}; use a model config with vocab_size={vocab}", where="Trainer")
        if cfg.seq_length != seq:
            raise ConfigError(f"model {cfg.name} has seq_length {cfg.seq_length} but {where} was prepared with "
                              f"--seq-length {seq}; prepare the data with --seq-length {cfg.seq_length} "
                              f"or use a model with seq_length {seq}", where="Trainer")
        return cfg

    def _check_model_matches(self, cfg, info) -> None:
        """The checkpoint's model must be the one this Trainer was asked for (the vocabulary may differ)."""
        from .model import GPT2Config

        if isinstance(self.model, (str, dict)):
            name = self.model if isinstance(self.model, str) else self.model.get("model_type", "gpt2")
            want = GPT2Config.from_name(name, vocab_size=cfg.vocab_size,
                                        **({k: v for k, v in self.model.items() if k != "model_type"}
                                           if isinstance(self.model, dict) else {}))
        else:
            want = self.model.config if _is_instance(self.model) else self.model
        diff = [f"{f} {getattr(cfg, f)} (checkpoint) vs {getattr(want, f)} (model={want.name})"
                for f in weights.SHAPE_FIELDS if getattr(cfg, f) != getattr(want, f)]
        if diff:
            raise CheckpointError(f"{info.path} holds a model of another shape: " + "; ".join(diff)
                                  + "; pass the matching model or another checkpoint")

    def _lineage(self, manifest: dict, dataset: str, start: ckpt.CheckpointInfo | None) -> dict:
        """Dataset id, tokenizer (copied into output_dir so checkpoints outlive the dataset), parent."""
        src = Path(dataset) / manifest["tokenizer"]["file"]
        sha = manifest["tokenizer"]["sha256"]
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        dest = out / "tokenizer.model"
        if dest.is_file() and sha256_file(dest) != sha:
            dest = out / f"tokenizer-{sha[:12]}.model"
        if not dest.is_file():
            copy_durable(src, dest)
        return {"dataset_id": manifest["dataset_id"], "dataset": str(Path(dataset).resolve()),
                "tokenizer": {"path": str(dest.resolve()), "sha256": sha},
                "parent": start.reference() if start is not None else None}


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


def _output_dir_problems(output_dir, dataset_paths) -> list[str]:
    """output_dir must be a folder (or not exist yet, under a folder) and hold no dataset, nor lie in one."""
    out = Path(output_dir).expanduser()
    probe = out
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == out else f"lies under {probe}, which is a file"
        return [f"output_dir={output_dir}: {where}, not a folder; set output_dir (--output_dir or the run "
                "config's output_dir) to a new or existing folder"]
    if probe.is_symlink() and not probe.exists():
        return [f"output_dir={output_dir}: {probe} is a dangling symbolic link; choose another folder"]
    return overlap_problems(output_dir, dataset_paths, flag="output_dir")


def _check_dataset_files(folder, manifest: dict) -> None:
    """DataError when the dataset's files (its tokenizer included) are missing or changed, before training."""
    problems = datasets.verify(folder, manifest, hashes=False)
    tok = Path(folder) / manifest["tokenizer"]["file"]
    if not problems and sha256_file(tok) != manifest["tokenizer"]["sha256"]:
        problems.append(f"{tok}: sha256 does not match the manifest (corrupted or changed)")
    if problems:
        raise DataError(f"train_dataset {folder} is incomplete or changed since `mftasks data prepare` wrote it:\n"
                        + "\n".join(f"  - {p}" for p in problems)
                        + "\nprepare the dataset again (or restore the missing files)")


def _remove_own_checkpoint(info: ckpt.CheckpointInfo) -> None:
    """overwrite_output_dir: remove an old checkpoint of this run's stage (one its mftasks manifest claims),
    the manifest first so that a reader never trusts a half-deleted pair."""
    info.manifest_path.unlink(missing_ok=True)
    info.path.unlink(missing_ok=True)


def _foreign_files(folder: Path, names: list[str]) -> list[str]:
    """The planned checkpoint names under which `folder` already holds something mftasks did not write: a file
    with no mftasks manifest beside it, or a manifest-named file that is not an mftasks manifest."""
    problems = []
    for name in names:
        path = folder / name
        mpath = ckpt.manifest_path_of(path)
        for p in (path, mpath):
            if not (p.exists() or p.is_symlink()):
                continue
            try:
                ckpt.read_manifest(path)
            except CheckpointError:
                problems.append(f"{p} is not an mftasks checkpoint file, but this run would write its own under "
                                "that name; move it away or choose another output_dir")
                break
    return problems


def _no_extra(kwargs: dict, method: str) -> None:
    if kwargs:
        raise ConfigError(f"unknown argument(s) {sorted(kwargs)}", where=f"Trainer.{method}")


def _world() -> tuple[int, int]:
    """(rank, world size) of this process: from MindSpore's communication when it was initialised."""
    try:
        from mindspore.communication.management import GlobalComm, get_group_size, get_rank
    except ImportError:
        return 0, 1
    if not GlobalComm.INITED:
        return 0, 1
    return get_rank(), get_group_size()


def _device_target() -> str:
    import mindspore as ms

    target = ms.get_context("device_target")
    from .context import device_unavailable_reason

    reason = device_unavailable_reason(target)
    if reason:
        raise DeviceError(f"MindSpore's device_target is {target!r} but {reason}; set device_target='CPU'")
    return target


def _is_instance(model) -> bool:
    from .model import GPT2LMHeadModel

    return isinstance(model, GPT2LMHeadModel)


def _count(net, trainable: bool = False) -> int:
    from .model import num_parameters

    return num_parameters(net, trainable_only=trainable)


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}: training diverged; lower learning_rate "
                                 "or check the data")


def _verified_at(folder, prefix: str, step: int) -> ckpt.CheckpointInfo | None:
    for info in reversed(ckpt.listing(folder)):
        if info.manifest.get("prefix") == prefix and info.global_step == step and not ckpt.verify(info.path):
            return info
    return None


def _all_reduce_min(value: int) -> int:
    import mindspore as ms
    from mindspore import ops

    # CPU collectives: AllReduce sums float only, so gather every rank's value and take the minimum here.
    out = ops.AllGather()(ms.Tensor(np.array([value], dtype=np.float32)))
    return int(out.asnumpy().min())


def _all_reduce_sum(values: list[float]) -> list[float]:
    import mindspore as ms
    from mindspore import ops

    out = ops.AllReduce()(ms.Tensor(np.array(values, dtype=np.float32)))  # CPU AllReduce has no float64
    return [float(x) for x in out.asnumpy()]
