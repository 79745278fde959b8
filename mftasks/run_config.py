"""The YAML run configuration: MindFormers' run_*.yaml, but flat and typed (no `type:` registry).

A run file has these top-level keys (all optional; defaults below):

    run_mode: train            # train | finetune | eval | predict
    seed: 42                   # one seed for everything (training.seed is taken from here)
    output_dir: ./output       # likewise training.output_dir
    load_checkpoint: null      # weights to start from
    use_parallel: false        # true only under `mftasks launch` / msrun
    context: {...}             # ContextConfig
    parallel: {...}            # ParallelContextConfig
    parallel_config: {...}     # ParallelConfig (data/model/pipeline split)
    model: {model_type: gpt2, n_layer: ..., ...}
    pet: {pet_method: lora, lora_rank: 64, ...}
    training: {...}            # TrainingArguments
    train_dataset: null
    eval_dataset: null
    predict: {max_new_tokens: 32, ...}

`load_run_config` reports every unknown key (with its dotted path, the file and the closest valid
name) and every bad value in one ConfigError.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mftasks.context import ContextConfig, ParallelConfig, ParallelContextConfig, check_parallel_setup
from mftasks.errors import ConfigError
from mftasks.model.config import GPT2Config
from mftasks.model.lora import PET_METHODS
from mftasks.training_args import TrainingArguments
from mftasks.typed_config import Checks, Key, TypedConfig, check_section, dotted, plain, unknown_key_problem

__all__ = ["FLAG_KEYS", "MODEL_KEYS", "PET_KEYS", "PREDICT_KEYS", "RUN_MODES", "RunConfig", "load_run_config"]

RUN_MODES = ("train", "finetune", "eval", "predict")
"""What a run does; the one list every other module (stages, flows) takes its run modes from."""

FLAG_KEYS = {
    "pet_method": "pet.pet_method",
    "model_type": "model.model_type",
    "device_target": "context.device_target",
    "device_id": "context.device_id",
    "data_parallel": "parallel_config.data_parallel",
    "model_parallel": "parallel_config.model_parallel",
    "pipeline_parallel": "parallel_config.pipeline_stage",
    "pipeline_stage": "parallel_config.pipeline_stage",
    "micro_size": "parallel_config.micro_batch_num",
    "optimizer_parallel": "parallel.enable_parallel_optimizer",
}
"""MindFormers command-line flag names accepted as override keys, and the dotted key each sets.
(Top-level keys such as run_mode, train_dataset, eval_dataset, load_checkpoint need no mapping.)"""


def _pos(v: Any) -> bool:
    return v >= 1


def _prob(v: Any) -> bool:
    return 0 <= v < 1


MODEL_SET_ELSEWHERE = {
    "name": "model.model_type names the preset",
    "vocab_size": "taken from the dataset's tokenizer",
    "layer_norm_epsilon": "kept at the preset's value",
    "initializer_range": "kept at the preset's value",
}
"""GPT2Config fields a run's model section does not set (the lora_* fields are set in the pet section)."""

_MODEL_HINTS = typing.get_type_hints(GPT2Config)
_MODEL_RANGES = {int: (_pos, "must be >= 1"), float: (_prob, "must be in [0, 1)")}  # sizes; dropouts

MODEL_KEYS = {
    "model_type": Key(str, bool, "must name a model preset such as 'gpt2' or 'gpt2_tiny'"),
    **{f.name: Key(_MODEL_HINTS[f.name], *_MODEL_RANGES[_MODEL_HINTS[f.name]])
       for f in dataclasses.fields(GPT2Config)
       if f.name not in MODEL_SET_ELSEWHERE and not f.name.startswith("lora_")},
}
"""The model section: a preset name plus optional overrides of GPT2Config fields (the preset table lives in
mftasks.model)."""

PET_KEYS = {
    "pet_method": Key(str | None, lambda v: v in PET_METHODS, "must be '' (full fine-tuning) or 'lora'", "",
                      normalise=lambda v: (v or "").lower()),
    # No defaults here: an unset lora_* key takes the model preset's value (scaled down for tiny presets).
    "lora_rank": Key(int, _pos, "must be >= 1"),
    "lora_alpha": Key(float, lambda v: v > 0, "must be > 0"),
    "lora_dropout": Key(float, _prob, "must be in [0, 1)"),
    "lora_targets": Key(list[str] | None, lambda v: v is None or len(v) > 0,
                        "must be a non-empty list of layer names, or null for the model's default "
                        "(query and value projections)"),
}

PREDICT_KEYS = {
    "max_new_tokens": Key(int, _pos, "must be >= 1", 32),
    "do_sample": Key(bool, default=False),
    "top_k": Key(int, lambda v: v >= 0, "must be >= 0 (0 = off)", 0),
    "top_p": Key(float, lambda v: 0 < v <= 1, "must be in (0, 1]", 1.0),
    "temperature": Key(float, lambda v: v > 0, "must be > 0", 1.0),
    "repetition_penalty": Key(float, lambda v: v > 0, "must be > 0 (1.0 = off)", 1.0),
}

_DICT_SECTIONS = {"model": MODEL_KEYS, "pet": PET_KEYS, "predict": PREDICT_KEYS}
_CLASS_SECTIONS = {"context": ContextConfig, "parallel": ParallelContextConfig,
                   "parallel_config": ParallelConfig, "training": TrainingArguments}
_TOP_LEVEL_ONLY = ("seed", "output_dir")  # set once at the top, copied into training


@dataclass(frozen=True)
class RunConfig(TypedConfig):
    """Everything one run needs, validated as a whole."""

    run_mode: str = "train"
    """train | finetune | eval | predict."""
    seed: int = 42
    """Seed for everything; copied into training.seed."""
    output_dir: str = "./output"
    """Folder for checkpoints, logs and the resolved config; copied into training.output_dir."""
    load_checkpoint: str | None = None
    """Checkpoint (file or folder) whose weights the run starts from."""
    use_parallel: bool = False
    """Run as one rank of a cluster started by `mftasks launch` / msrun."""
    context: ContextConfig = field(default_factory=ContextConfig)
    parallel: ParallelContextConfig = field(default_factory=ParallelContextConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    model: dict = field(default_factory=lambda: {"model_type": "gpt2"})
    """Preset name (`model_type`) plus optional overrides; keys in MODEL_KEYS."""
    pet: dict = field(default_factory=dict)
    """Parameter-efficient tuning: pet_method '' or 'lora' and the lora_* settings (PET_KEYS)."""
    training: TrainingArguments = field(default_factory=TrainingArguments)
    train_dataset: str | None = None
    """Training data folder or file."""
    eval_dataset: str | None = None
    """Evaluation data folder or file."""
    predict: dict = field(default_factory=dict)
    """Generation settings for run_mode predict (PREDICT_KEYS)."""

    def _check(self, c: Checks) -> None:
        c.require("run_mode", lambda v: v in RUN_MODES, f"must be one of {', '.join(RUN_MODES)}")
        c.require("seed", lambda v: v >= 0, "must be >= 0")
        c.require("output_dir", bool, "must be a non-empty path")
        for name in ("load_checkpoint", "train_dataset", "eval_dataset"):
            c.require(name, lambda v: v is None or bool(v), "must be a path or null")
        for name, spec in _DICT_SECTIONS.items():
            if c.ok(name):
                section, problems = check_section(name, getattr(self, name), spec)
                if name == "pet" and section.get("pet_method") != "lora":  # lora_* defaults only for LoRA
                    section = {k: v for k, v in section.items() if k == "pet_method" or k in self.pet}
                c.set(name, section)
                c.problems.extend(problems)
        if c.ok("model") and "model_type" not in self.model:
            c.problem("model.model_type: missing; name a model preset such as 'gpt2' or 'gpt2_tiny'")
        if c.ok("use_parallel", "context", "parallel", "parallel_config"):
            c.problems.extend(check_parallel_setup(self.use_parallel, self.parallel, self.parallel_config,
                                                   self.context.device_target))
        if not c.problems and c.ok("training"):  # one seed and one output folder for the whole run
            c.set("training", self.training.replace(seed=self.seed, output_dir=self.output_dir))

    @property
    def pet_method(self) -> str:
        """'' (no PET) or 'lora'."""
        return self.pet.get("pet_method", "")

    @classmethod
    def build(cls, data: Mapping[str, Any] | None, *, where: str, path: str = ""):
        """Build from nested dicts; returns `(RunConfig or None, problems)` with dotted paths."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            return None, [f"expected a mapping of top-level keys, got {type(data).__name__}"]
        names, kwargs, problems = cls.field_names(), {}, []
        for key, value in data.items():
            if key not in names:
                problems.append(unknown_key_problem(key, names, path=path, where=where))
            elif key in _CLASS_SECTIONS:
                if key == "training" and isinstance(value, Mapping):
                    value = _without_top_level_keys(value, problems)
                obj, section_problems = _CLASS_SECTIONS[key].build(value, where=where, path=dotted(path, key))
                problems += section_problems
                if obj is not None:
                    kwargs[key] = obj
            elif key in _DICT_SECTIONS:
                kwargs[key] = _known_keys(key, value, _DICT_SECTIONS[key], where, problems)
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs), problems
        except ConfigError as e:
            return None, problems + [dotted(path, p) for p in e.problems]

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict that `RunConfig.from_dict` reads back (training omits seed/output_dir)."""
        out = {}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(value, TypedConfig) else plain(copy.deepcopy(value))
        for key in _TOP_LEVEL_ONLY:
            out["training"].pop(key)
        return out

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (to save beside the outputs)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _without_top_level_keys(training: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    for key in _TOP_LEVEL_ONLY:
        if key in training:
            problems.append(f"training.{key}={training[key]!r}: set '{key}' at the top level of the run config "
                            f"(training.{key} is copied from there)")
    return {k: v for k, v in training.items() if k not in _TOP_LEVEL_ONLY}


def _known_keys(name: str, value: Any, spec: dict[str, Key], where: str, problems: list[str]) -> Any:
    """Drop (and report, naming `where`) unknown keys of a plain-dict section; None reads as {}."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return value  # RunConfig reports the wrong type
    for key in value:
        if key not in spec:
            problems.append(unknown_key_problem(key, spec, path=name, where=where))
    return {k: v for k, v in value.items() if k in spec}


def _section_keys(section: str) -> list[str] | None:
    if section in _CLASS_SECTIONS:
        cls = _CLASS_SECTIONS[section]
        return [*cls.field_names(), *cls.ALIASES]
    if section in _DICT_SECTIONS:
        return list(_DICT_SECTIONS[section])
    return None


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> list[str]:
    """Set dotted keys (`training.learning_rate`) or flag names (`pet_method`) in `data`, in place.
    None values mean "not given" and are skipped. Returns problems for keys that do not exist."""
    problems, top = [], RunConfig.field_names()
    for raw_key, value in overrides.items():
        if value is None:
            continue
        key = FLAG_KEYS.get(raw_key, raw_key)
        head, _, rest = key.partition(".")
        if head not in top:
            problems.append(unknown_key_problem(head, [*top, *FLAG_KEYS], where="overrides"))
            continue
        keys = _section_keys(head)
        if keys is None and rest:
            problems.append(f"override {raw_key!r}: '{head}' is a single value, not a section; use '{head}'")
        elif keys is not None and (not rest or "." in rest or rest not in keys):
            if rest and "." not in rest:
                problems.append(unknown_key_problem(rest, keys, path=head, where="overrides"))
            else:
                problems.append(f"override {raw_key!r}: '{head}' is a section; name one key as '{head}.<key>'")
        elif not rest:
            data[head] = value
        else:
            section = data.get(head)
            if section is None:
                section = data[head] = {}
            if isinstance(section, dict):
                section[rest] = value
    return problems


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key a mapping sets twice (YAML would silently keep the last)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: PyYAML's own error names it
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.duplicates.append(f"key '{key}' is set twice (line {first_line[key]} and line {line}); "
                                       "YAML would keep only the last value: keep one")
            else:
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, where: str) -> Any:
    """The YAML document in `text`; ConfigError for invalid YAML or a key set twice in one mapping."""
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], where=where) from e
    finally:
        loader.dispose()
    ConfigError.raise_if(loader.duplicates, where=where)
    return data


def load_run_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run YAML, apply `overrides` (dotted keys or FLAG_KEYS names; None values skipped) and
    validate. Raises one ConfigError (where = the file path) listing every problem."""
    where, file = str(path), Path(path)
    if not file.is_file():
        raise ConfigError([f"run config file not found: {where} (resolved to {file.resolve()}); check the path, "
                           "e.g. configs/gpt2/run_gpt2_tiny.yaml"], where=where)
    data = read_yaml(file.read_text(encoding="utf-8"), where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"the file must hold a mapping of top-level keys, got {type(data).__name__}"], where)
    problems = _apply_overrides(data, overrides or {})
    config, build_problems = RunConfig.build(data, where=where)
    ConfigError.raise_if(problems + build_problems, where=where)
    return config
