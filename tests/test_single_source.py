"""Each setting's list of names is written once: the flows' parameter types, the run config's key tables and
the command line take theirs from the library, and no second module spells the list again."""
from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from mftasks.errors import ConfigError
from mftasks.model import PRESETS, GPT2Config
from mftasks.model.lora import PET_METHODS
from mftasks.run_config import MODEL_KEYS, MODEL_SET_ELSEWHERE, PET_KEYS, RUN_MODES

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("mftasks", "flows") for p in (REPO / d).rglob("*.py"))


def _flows():
    import flows.nightly
    import flows.pipeline
    import flows.stages

    for module in (flows.pipeline, flows.stages, flows.nightly):
        for value in vars(module).values():
            if hasattr(value, "fn") and hasattr(value, "name") and value.fn.__module__ == module.__name__:
                yield value


def _enums(name: str) -> dict[str, list]:
    from prefect.utilities.callables import parameter_schema

    found = {}
    for f in _flows():
        prop = parameter_schema(f).model_dump_for_openapi()["properties"].get(name)
        if prop is not None:
            found[f.name] = prop.get("enum")
    return found


def test_flow_model_type_is_the_library_presets():
    enums = _enums("model_type")
    assert enums, "no flow has a model_type parameter"
    for flow_name, enum in enums.items():
        assert enum is not None and sorted(enum) == sorted(PRESETS), flow_name
        assert enum == sorted(PRESETS, key=lambda n: PRESETS[n]["n_layer"] * PRESETS[n]["n_embd"]), flow_name


def test_flow_pet_method_is_the_library_pet_methods():
    enums = _enums("pet_method")
    assert enums, "no flow has a pet_method parameter"
    assert all(enum == list(PET_METHODS) for enum in enums.values()), enums


def test_flow_device_target_is_the_library_device_targets():
    from mftasks.context import DEVICE_TARGETS

    enums = _enums("device_target")
    assert {"finetune-gpt2", "train", "finetune", "evaluate", "predict"} <= set(enums), enums
    assert all(enum == list(DEVICE_TARGETS) for enum in enums.values()), enums


def test_run_modes_of_the_stage_and_the_command_line_are_the_run_configs():
    import argparse

    from mftasks.run import add_arguments
    from mftasks.stage import StageSpec

    for mode in RUN_MODES:  # a stage's run mode is checked by the RunConfig it builds, nowhere else
        StageSpec(name="s", run_mode=mode, output_dir="out", predict_data=["hi"])
    with pytest.raises(ConfigError, match=re.escape(f"run_mode='pretrain': must be one of {', '.join(RUN_MODES)}")):
        StageSpec(name="s", run_mode="pretrain", output_dir="out")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "run_mode"]
    assert tuple(action.choices) == RUN_MODES


def test_model_and_pet_keys_are_gpt2config_fields():
    fields = [f.name for f in dataclasses.fields(GPT2Config)]
    hints = typing.get_type_hints(GPT2Config)
    overrides = [k for k in MODEL_KEYS if k != "model_type"]
    lora = [k for k in PET_KEYS if k != "pet_method"]
    # Every GPT2Config field is a model key, a pet key, or named (with its reason) as set elsewhere.
    assert sorted([*overrides, *lora, *MODEL_SET_ELSEWHERE]) == sorted(fields)
    assert not set(overrides) & set(MODEL_SET_ELSEWHERE) and set(MODEL_SET_ELSEWHERE) <= set(fields)
    assert lora == [f for f in fields if f.startswith("lora_")]
    assert all(MODEL_KEYS[k].hint is hints[k] for k in overrides)


@pytest.mark.parametrize("name, home", [("PET_METHODS", "mftasks/model/lora.py"),
                                        ("RUN_MODES", "mftasks/run_config.py"),
                                        ("PRESETS", "mftasks/model/config.py"),
                                        ("MODEL_KEYS", "mftasks/run_config.py")])
def test_each_list_is_defined_in_one_module(name, home):
    define = re.compile(rf"^\s*{name}\s*(:[^=]*)?=", re.M)
    where = [str(p.relative_to(REPO)) for p in SOURCES if define.search(p.read_text(encoding="utf-8"))]
    assert where == [home]


def _literal_lists(path: Path):
    """Every list, tuple or set of two or more string literals written in `path`, as a set of its strings."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and len(node.elts) >= 2:
            if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                yield {e.value for e in node.elts}


@pytest.mark.parametrize("values, homes", [(RUN_MODES, ["mftasks/run_config.py"]),
                                           (PET_METHODS, ["mftasks/model/lora.py"]),
                                           (tuple(PRESETS), [])],  # presets are dicts, each naming itself
                         ids=["run_modes", "pet_methods", "presets"])
def test_no_module_spells_a_list_out_again(values, homes):
    where = [str(p.relative_to(REPO)) for p in SOURCES if any(set(values) <= found for found in _literal_lists(p))]
    assert where == homes
