import dataclasses

import pytest

from mftasks.errors import ConfigError
from mftasks.training_args import LR_SCHEDULERS, TrainingArguments


def test_mindformers_example_and_defaults():
    args = TrainingArguments(num_train_epochs=1, batch_size=2, learning_rate=0.001, warmup_steps=100,
                             sink_mode=True, sink_size=2)
    assert (args.batch_size, args.learning_rate, args.warmup_steps, args.sink_size) == (2, 0.001, 100, 2)
    default = TrainingArguments()
    assert default.output_dir == "./output" and default.seed == 42 and default.max_steps == -1
    assert default.lr_scheduler_type == "cosine" and default.optim == "adamw" and default.clip_grad


@pytest.mark.parametrize("field, value, needle", [
    ("batch_size", 0, ">= 1"),
    ("learning_rate", 0.0, "> 0"),
    ("learning_rate", -1e-3, "> 0"),
    ("adam_beta1", 1.0, "[0, 1)"),
    ("adam_beta2", -0.1, "[0, 1)"),
    ("adam_epsilon", 0.0, "> 0"),
    ("warmup_steps", -1, ">= 0"),
    ("warmup_ratio", 1.0, "[0, 1)"),
    ("lr_scheduler_type", "cosin", ", ".join(LR_SCHEDULERS)),
    ("save_total_limit", 0, ">= 1 or None"),
    ("sink_size", 0, ">= 1"),
    ("dataloader_drop_last", False, "False is not supported: the last incomplete batch is always dropped"),
    ("gradient_accumulation_steps", 0, ">= 1"),
    ("max_steps", 0, "-1"),
    ("max_grad_norm", -1.0, ">= 0"),
    ("save_strategy", "sometimes", "steps, epoch, no"),
    ("optim", "lion", "adamw"),
    ("eval_step_interval", 0, "-1 (never) or >= 1"),
    ("num_train_epochs", 0, ">= 1"),
])
def test_each_bad_value_is_named_with_its_range(field, value, needle):
    with pytest.raises(ConfigError) as err:
        TrainingArguments(**{field: value})
    message = str(err.value)
    assert f"{field}={value!r}" in message and needle in message
    assert err.value.where == "TrainingArguments"


def test_wrong_types_are_reported():
    with pytest.raises(ConfigError) as err:
        TrainingArguments(batch_size="8", sink_mode=1, learning_rate=True)
    problems = err.value.problems
    assert len(problems) == 3
    assert any("batch_size='8': expected int, got str" in p for p in problems)
    assert any("sink_mode=1: expected bool" in p for p in problems)
    assert any("learning_rate=True: expected float" in p for p in problems)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        TrainingArguments(batch_size=0, learning_rate=-1.0, lr_scheduler_type="warm")
    assert len(err.value.problems) == 3
    for name in ("batch_size", "learning_rate", "lr_scheduler_type"):
        assert name in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="not both"):
        TrainingArguments(warmup_steps=10, warmup_ratio=0.1)
    with pytest.raises(ConfigError, match="evaluation would never run"):
        TrainingArguments(do_eval=True, eval_step_interval=-1, eval_epoch_interval=-1)
    with pytest.raises(ConfigError, match="lr_end"):
        TrainingArguments(learning_rate=1e-4, lr_end=1e-3)


def test_normalisation_and_int_as_float():
    args = TrainingArguments(optim="AdamWeightDecay", lr_scheduler_type="Cosine", learning_rate=1)
    assert args.optim == "adamw" and args.lr_scheduler_type == "cosine"
    assert isinstance(args.learning_rate, float)
    assert not TrainingArguments(max_grad_norm=0).clip_grad and not TrainingArguments(max_grad_norm=None).clip_grad


def test_from_dict_unknown_key_names_key_where_and_suggestion():
    with pytest.raises(ConfigError) as err:
        TrainingArguments.from_dict({"lerning_rate": 1e-3, "batch_size": 0}, where="my.yaml")
    message = str(err.value)
    assert "unknown key 'lerning_rate'" in message and "my.yaml" in message
    assert "did you mean 'learning_rate'?" in message
    assert "batch_size=0" in message  # value problems come in the same error


def test_from_dict_aliases_and_yaml_float_strings():
    args = TrainingArguments.from_dict({"per_device_train_batch_size": 4, "eval_steps": 10,
                                        "learning_rate": "1e-4"})
    assert (args.batch_size, args.eval_step_interval, args.learning_rate) == (4, 10, 1e-4)
    with pytest.raises(ConfigError, match="set twice"):
        TrainingArguments.from_dict({"batch_size": 4, "per_device_train_batch_size": 4})


def test_to_dict_round_trip():
    args = TrainingArguments(batch_size=3, warmup_ratio=0.1, resume_from_checkpoint="ckpt")
    assert TrainingArguments.from_dict(args.to_dict()) == args


def test_replace_returns_validated_copy_and_never_mutates():
    args = TrainingArguments()
    other = args.replace(batch_size=16)
    assert other.batch_size == 16 and args.batch_size == 8
    with pytest.raises(ConfigError, match="batch_size=0"):
        args.replace(batch_size=0)
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        args.replace(batchsize=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.batch_size = 4


def test_warmup_warning():
    assert TrainingArguments(warmup_steps=100).warmup_warning(100) is None
    assert TrainingArguments(warmup_steps=100, learning_rate=1e-3).warmup_warning(10) == (
        "warmup_steps=100: more than the 10 training steps of this run, so the learning rate never reaches "
        "learning_rate=0.001 (it ends at 0.0001); lower warmup_steps to at most 10 or train longer")
    ratio = TrainingArguments(warmup_ratio=0.5)
    assert ratio.get_warmup_steps(10) == 5 and ratio.warmup_warning(10) is None
    with pytest.raises(ConfigError, match="total_steps=0"):
        ratio.warmup_warning(0)


def test_save_strategy_and_logging_interval():
    steps = TrainingArguments(save_strategy="steps", save_steps=3)
    assert [s for s in range(1, 11) if steps.saves_at(s, 10, 4)] == [3, 6, 9, 10]
    epoch = TrainingArguments(save_strategy="epoch", save_steps=3)
    assert [s for s in range(1, 11) if epoch.saves_at(s, 10, 4)] == [4, 8, 10]
    assert not any(TrainingArguments(save_strategy="no").saves_at(s, 10, 4) for s in range(1, 11))
    assert TrainingArguments(sink_mode=True, sink_size=2, logging_steps=3).logging_interval == 6  # one report a sink
    assert TrainingArguments(sink_mode=False, sink_size=2, logging_steps=3).logging_interval == 3
