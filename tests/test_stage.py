"""StageSpec: the stage's RunConfig is built and checked with the spec; its YAML is what every rank reads."""
from __future__ import annotations

import pytest

from mftasks.errors import ConfigError
from mftasks.run_config import load_run_config
from mftasks.stage import StageSpec, run_stage


def test_run_yaml_reads_back_as_the_stages_run_config(tmp_path):
    spec = StageSpec(name="lora", run_mode="finetune", pet_method="lora", output_dir=str(tmp_path / "out"),
                     nproc=2, lora_rank=2, dropout=0.0, learning_rate=1, max_new_tokens=4)
    config = spec.run_config(resume=True)
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    assert load_run_config(path) == config
    assert (config.training.resume_training, config.training.overwrite_output_dir) == (True, False)
    assert config.use_parallel and config.parallel_config.data_parallel == spec.world_size == 2
    assert config.pet == {"pet_method": "lora", "lora_rank": 2} and config.training.learning_rate == 1.0
    assert config.model == {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}
    assert spec.run_config(resume=False).training.overwrite_output_dir


def test_run_config_problems_come_with_the_stages_own_when_the_spec_is_built(tmp_path):
    with pytest.raises(ConfigError) as err:
        StageSpec(name="train", run_mode="train", output_dir="out", batch_size=0, pet_method="qlora",
                  train_dataset=str(tmp_path / "nope"))
    assert err.value.where == "stage train"
    assert err.value.problems == [
        "training.batch_size=0: must be a positive integer (>= 1)",
        "pet.pet_method='qlora': must be '' (full fine-tuning) or 'lora'",
        f"train_dataset={tmp_path / 'nope'}: not a prepared dataset (no manifest.json); run `mftasks data prepare`"]


def test_a_stage_field_that_is_wrong_is_said_once(tmp_path):
    with pytest.raises(ConfigError) as err:  # not again as parallel_config.data_parallel=0
        StageSpec(name="train", run_mode="train", output_dir="out", nproc=0)
    assert err.value.problems == ["nproc=0: must be >= 1"]
    with pytest.raises(ConfigError) as err:  # not again as training.batch_size
        StageSpec(name="train", run_mode="train", output_dir="out", batch_size="8")
    assert err.value.problems == ["batch_size='8': expected int, got str"]


def test_an_edited_spec_is_checked_again_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = StageSpec(name="train", run_mode="eval", output_dir="out")
    spec.batch_size = 0
    with pytest.raises(ConfigError, match=r"training\.batch_size=0") as err:
        run_stage(spec, "work")
    assert err.value.where == "stage train" and not any(tmp_path.iterdir())


LAUNCH_ONLY = {"name", "nproc", "nnodes", "node_rank", "master_addr", "master_port", "timeout", "hang_timeout",
               "predict_data"}
"""StageSpec fields the gang launch uses (folders, cluster, limits, the prompts file), not the run config."""


def _flat(section: dict) -> dict:
    """Every key of a nested run config with its value (no key is in two sections a stage sets)."""
    out = {}
    for key, value in section.items():
        out.update(_flat(value) if isinstance(value, dict) else {key: value})
    return out


def test_each_stage_setting_reaches_the_run_config_under_its_own_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    spec = StageSpec(name="s", run_mode="finetune", output_dir=str(tmp_path / "out"), model_type="gpt2_small_cpu",
                     pet_method="lora", train_dataset=str(data), eval_dataset=str(data), load_checkpoint=str(data),
                     batch_size=3, max_steps=7, learning_rate=2e-3, warmup_steps=1, save_steps=5, logging_steps=2,
                     seed=11, dropout=0.25, lora_rank=2, lora_alpha=4.0, max_new_tokens=5)
    written = _flat(spec.run_config().to_dict())
    carried = {f for f in StageSpec.field_names() if f not in LAUNCH_ONLY}
    assert carried <= set(written), carried - set(written)  # a new field is carried, or named in LAUNCH_ONLY
    assert {f: written[f] for f in carried} == {f: getattr(spec, f) for f in carried}
    assert written["attention_dropout"] == spec.dropout  # dropout sets both


def test_a_device_this_machine_lacks_is_refused_when_the_spec_is_built(tmp_path):
    with pytest.raises(ConfigError) as err:
        StageSpec(name="train", run_mode="train", output_dir=str(tmp_path / "out"), device_target="Ascend")
    assert ("device_target='Ascend': no Ascend device on this machine (no /dev/davinci[0-9]* device files); run the "
            "stage on a machine that has it") in str(err.value)
    assert not (tmp_path / "out").exists()
