"""`mftasks run`: one run from a YAML config plus MindFormers-style flags (like run_mindformer.py).

    mftasks run --config configs/gpt2/run_gpt2_tiny.yaml --run_mode train --train_dataset DATA
    mftasks run --config configs/gpt2/run_gpt2_lora_cpu.yaml --run_mode finetune --train_dataset FT
    mftasks run --config ... --run_mode eval --eval_dataset DATA
    mftasks run --config ... --run_mode predict --predict_data "hello!"
    mftasks run --config ... --run_mode predict --predict_file prompts.json   (a JSON list of strings)
    mftasks run --config ... --run_mode predict --predict_data input.txt --predict_batch_size 4

Predict results are printed and written to output_dir/text_generation_result.txt (MindFormers' file).

Programs that start `mftasks run` (the pipeline's stages) pass prompts with `--predict_file`: a prompt
is data, so one that reads like an option (`--result_file=/x`) stays a prompt.  `--predict_data` is
for people typing a command (MindFormers' flag).
"""
from __future__ import annotations

import dataclasses
import faulthandler
import json
import signal
from pathlib import Path

from .context import init_context
from .errors import ConfigError
from .files import atomic_write_json
from .launcher.record import record
from .run_config import RUN_MODES, RunConfig, load_run_config

FLAGS = ("run_mode", "train_dataset", "eval_dataset", "pet_method", "model_type", "load_checkpoint", "output_dir",
         "device_target", "device_id", "use_parallel", "data_parallel", "model_parallel", "pipeline_parallel",
         "micro_size", "seed")


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="run YAML, e.g. configs/gpt2/run_gpt2_tiny.yaml")
    p.add_argument("--run_mode", choices=RUN_MODES)
    p.add_argument("--train_dataset", help="folder made by `mftasks data prepare`")
    p.add_argument("--eval_dataset", help="folder made by `mftasks data prepare`")
    inputs = p.add_mutually_exclusive_group()
    inputs.add_argument("--predict_data", nargs="+", help="input text(s) for predict")
    inputs.add_argument("--predict_file", metavar="FILE",
                        help="input texts for predict as a JSON list of strings (how programs pass prompts)")
    p.add_argument("--predict_batch_size", type=int, metavar="N",
                   help="predict N inputs at a time (default: all at once); the results do not depend on it")
    p.add_argument("--pet_method", help="'' (full) or lora")
    p.add_argument("--model_type", help="model preset, e.g. gpt2, gpt2_tiny")
    p.add_argument("--load_checkpoint", help="checkpoint file or folder to start from / evaluate / predict with")
    p.add_argument("--output_dir")
    p.add_argument("--device_target")
    p.add_argument("--device_id", type=int)
    p.add_argument("--use_parallel", type=_bool, metavar="true|false")
    p.add_argument("--data_parallel", type=int)
    p.add_argument("--model_parallel", type=int)
    p.add_argument("--pipeline_parallel", type=int)
    p.add_argument("--micro_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--result_file", help="also write the result (train summary, eval metrics, predictions) as JSON")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)


def config_from_args(args) -> RunConfig:
    overrides = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    return load_run_config(args.config, overrides)


def predict_inputs(args, run_mode: str) -> list[str] | str | None:
    """The input texts of a predict run (--predict_data or --predict_file); a ConfigError, before anything
    starts, when predict has none or they are given to another run mode."""
    where = "mftasks run"
    path = getattr(args, "predict_file", None)
    texts = getattr(args, "predict_data", None)
    if run_mode != "predict":
        if texts is not None or path is not None:
            flag = "--predict_data" if texts is not None else "--predict_file"
            raise ConfigError(f"{flag} is only used with run_mode predict (run_mode is {run_mode})", where=where)
        return None
    if path is not None:
        try:
            texts = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--predict_file {path}: cannot read it ({exc.strerror or exc})", where=where) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--predict_file {path}: not a JSON list of strings ({exc})", where=where) from None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"--predict_file {path}: must hold a non-empty JSON list of strings", where=where)
    if not texts:
        raise ConfigError("run_mode predict needs input texts: --predict_data TEXT [TEXT ...] or "
                          "--predict_file FILE (a JSON list of strings)", where=where)
    if path is None and len(texts) == 1 and Path(texts[0]).is_file():
        return texts[0]  # MindFormers' `--predict_data input.txt`: the Trainer reads one prompt a line
    return list(texts)


def run(rc: RunConfig, predict_data: list[str] | str | None = None, predict_batch_size: int | None = None):
    """Initialise MindSpore from the config, build the Trainer and run the configured mode."""
    from .trainer import Trainer

    init_context(rc.use_parallel, rc.context, rc.parallel, parallel_layout=rc.parallel_config)
    model = dict(rc.model)
    pet = dict(rc.pet)
    pet_method = pet.pop("pet_method", "")
    for key, value in pet.items():  # lora_rank, lora_alpha, ... are model-config fields
        if value is not None:
            model[key] = tuple(value) if isinstance(value, list) else value
    trainer = Trainer(task="text_generation", model=model, pet_method=pet_method, args=rc.training,
                      train_dataset=rc.train_dataset, eval_dataset=rc.eval_dataset)
    layout = rc.parallel_config
    trainer.set_parallel_config(data_parallel=layout.data_parallel, model_parallel=layout.model_parallel,
                                pipeline_stage=layout.pipeline_stage, micro_batch_num=layout.micro_batch_num,
                                optimizer_shard=layout.optimizer_shard, vocab_emb_dp=layout.vocab_emb_dp)
    mode = rc.run_mode
    if mode == "train":
        return trainer.train(train_checkpoint=rc.load_checkpoint or False)
    if mode == "finetune":
        return trainer.finetune(finetune_checkpoint=rc.load_checkpoint)
    if mode == "eval":
        return trainer.evaluate(eval_checkpoint=rc.load_checkpoint)
    if not predict_data:
        raise ConfigError("run_mode predict needs input texts (a non-empty list of strings)", where="mftasks run")
    return trainer.predict(input_data=predict_data, predict_checkpoint=rc.load_checkpoint,
                           batch_size=predict_batch_size, **rc.predict)


@record  # this rank's failure record for the launcher (MFTASKS_ERROR_FILE): see mftasks/launcher/record.py
def main(args) -> int:
    # A launcher that sees no progress sends SIGUSR1 before stopping the gang: dump every thread's stack
    # into this rank's log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rc = config_from_args(args)
    result = run(rc, predict_inputs(args, rc.run_mode), getattr(args, "predict_batch_size", None))
    if rc.run_mode in ("eval", "predict"):
        print(result)
    if args.result_file:
        from .distributed import rank_and_world

        if rank_and_world()[0] == 0:  # one writer: rank 0
            atomic_write_json(args.result_file, {"run_mode": rc.run_mode, "result": _plain(result)})
    return 0


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
