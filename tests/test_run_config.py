from pathlib import Path

import pytest
import yaml

from mftasks.context import ContextConfig
from mftasks.errors import ConfigError
from mftasks.run_config import RunConfig, load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))
TINY = CONFIGS / "gpt2" / "run_gpt2_tiny.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_the_five_gpt2_configs_ship():
    names = {p.name for p in SHIPPED}
    assert {"run_gpt2.yaml", "run_gpt2_lora.yaml", "run_gpt2_cpu.yaml", "run_gpt2_lora_cpu.yaml",
            "run_gpt2_tiny.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_round_trips(path, tmp_path):
    config = load_run_config(path)
    assert config.training.seed == config.seed and config.training.output_dir == config.output_dir
    assert RunConfig.from_dict(config.to_dict()) == config
    assert load_run_config(write(tmp_path, config.to_yaml())) == config


def test_lora_and_tiny_values():
    lora = load_run_config(CONFIGS / "gpt2" / "run_gpt2_lora.yaml")
    assert lora.run_mode == "finetune" and lora.pet_method == "lora"
    assert (lora.pet["lora_rank"], lora.pet["lora_alpha"], lora.pet["lora_dropout"]) == (64, 128.0, 0.1)
    tiny = load_run_config(TINY)
    assert tiny.model["model_type"] == "gpt2_tiny" and tiny.context.device_target == "CPU"
    assert tiny.pet == {"pet_method": ""}  # no lora_* defaults without LoRA


def test_unknown_key_names_key_path_file_and_suggestion(tmp_path):
    path = write(tmp_path, "training:\n  lerning_rate: 1.0e-3\nmodel:\n  model_type: gpt2\n  n_layers: 2\n"
                           "trainig: {}\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    message, where = str(err.value), str(path)
    assert err.value.where == where
    assert f"unknown key 'lerning_rate' at training.lerning_rate in {where}; did you mean 'learning_rate'?" in message
    assert f"unknown key 'n_layers' at model.n_layers in {where}; did you mean 'n_layer'?" in message
    assert f"unknown key 'trainig' in {where}; did you mean 'training'?" in message


def test_all_bad_values_reported_at_once(tmp_path):
    path = write(tmp_path, "run_mode: pretrain\ncontext: {device_target: TPU}\nmodel: {model_type: gpt2, "
                           "dropout: 1.5}\npet: {pet_method: qlora}\ntraining: {batch_size: 0, adam_beta2: 1.0}\n"
                           "predict: {top_p: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    message = str(err.value)
    for needle in ("run_mode='pretrain'", "context.device_target='TPU'", "model.dropout=1.5",
                   "pet.pet_method='qlora'", "training.batch_size=0", "training.adam_beta2=1.0", "predict.top_p=0"):
        assert needle in message
    assert len(err.value.problems) == 7


def test_three_bad_training_fields_one_error(tmp_path):
    path = write(tmp_path, "training: {batch_size: 0, learning_rate: -1.0, sink_size: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert len(err.value.problems) == 3
    for name in ("training.batch_size", "training.learning_rate", "training.sink_size"):
        assert name in str(err.value)


def test_overrides_flags_dotted_and_none(tmp_path):
    config = load_run_config(TINY, {"run_mode": "finetune", "pet_method": "lora", "model_type": "gpt2",
                                    "train_dataset": "/data/train", "training.learning_rate": "2e-4",
                                    "eval_dataset": None})
    assert (config.run_mode, config.pet_method, config.model["model_type"]) == ("finetune", "lora", "gpt2")
    assert config.train_dataset == "/data/train" and config.training.learning_rate == 2e-4
    assert "lora_rank" not in config.pet  # unset: the model preset's LoRA defaults apply
    with pytest.raises(ConfigError) as err:
        load_run_config(TINY, {"training.lerning_rate": 1e-3, "pet_methd": "lora"})
    message = str(err.value)
    assert "unknown key 'lerning_rate' at training.lerning_rate in overrides; did you mean 'learning_rate'?" in message
    assert "unknown key 'pet_methd' in overrides; did you mean 'pet_method'?" in message


def test_seed_and_output_dir_live_at_top_level(tmp_path):
    with pytest.raises(ConfigError, match="training.seed=3: set 'seed' at the top level"):
        load_run_config(write(tmp_path, "seed: 1\ntraining: {seed: 3}\n"))
    config = RunConfig(seed=7, output_dir="/tmp/out")
    assert (config.training.seed, config.training.output_dir) == (7, "/tmp/out")


def test_parallel_checks(tmp_path):
    with pytest.raises(ConfigError, match="parallel_config.model_parallel=2.*Ascend"):
        load_run_config(TINY, {"use_parallel": True, "model_parallel": 2})
    with pytest.raises(ConfigError, match="world size 1"):
        load_run_config(TINY, {"data_parallel": 2})
    config = load_run_config(TINY, {"use_parallel": True, "data_parallel": 2})
    assert config.parallel_config.world_size == 2
    ascend = load_run_config(CONFIGS / "gpt2" / "run_gpt2.yaml", {"use_parallel": True, "model_parallel": 2})
    assert ascend.context.device_target == "Ascend"


def test_missing_file_and_bad_yaml(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"not found: {missing}"):
        load_run_config(missing)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(write(tmp_path, "training: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_run_config(write(tmp_path, "- a\n- b\n"))


def test_a_key_set_twice_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path, "training:\n  learning_rate: 1.0e-4\n  batch_size: 2\n  learning_rate: 5.0e-5\n"
                           "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    msg = str(err.value)
    assert str(path) in msg and "2 problems" in msg
    assert "key 'learning_rate' is set twice (line 2 and line 4); YAML would keep only the last value" in msg
    assert "key 'seed' is set twice (line 5 and line 6)" in msg


def test_section_of_wrong_shape(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, "training: 3\nmodel: [gpt2]\n"))
    message = str(err.value)
    assert "training: expected a mapping" in message and "model=['gpt2']: expected dict" in message


def test_direct_construction_and_to_dict():
    config = RunConfig(context=ContextConfig(device_target="cpu"), model={"model_type": "gpt2_tiny", "n_layer": 2},
                       pet={"pet_method": "LoRA", "lora_rank": 4})
    assert config.pet_method == "lora" and config.pet["lora_rank"] == 4 and "lora_alpha" not in config.pet
    assert "seed" not in config.to_dict()["training"]
    assert yaml.safe_load(config.to_yaml())["model"] == {"model_type": "gpt2_tiny", "n_layer": 2}
    with pytest.raises(ConfigError, match="model.model_type: missing"):
        RunConfig(model={})
    with pytest.raises(ConfigError, match="unknown key 'layers' at model.layers"):
        RunConfig(model={"model_type": "gpt2", "layers": 2})
