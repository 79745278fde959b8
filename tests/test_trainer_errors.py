"""Bad input to the Trainer: each error names what, where and how to fix it."""
from __future__ import annotations

import pytest

from mftasks import ContextConfig, Trainer, TrainingArguments, init_context
from mftasks.errors import CheckpointError, ConfigError, DataError, DeviceError

TINY = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}


def test_unknown_task_model_and_pet_method_listed_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        Trainer(task="image_classification", model="gpt5", pet_method="prefix", args={"output_dir": str(tmp_path)})
    msg = str(err.value)
    assert "3 problems" in msg
    assert "valid tasks: text_generation" in msg and "gpt2_tiny" in msg and "'lora'" in msg


def test_dataset_folder_missing_or_not_prepared(tmp_path):
    with pytest.raises(ConfigError, match="train_dataset: dataset folder .*nope does not exist"):
        Trainer(model="gpt2_tiny", train_dataset=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="eval_dataset: .* is not a prepared dataset .*mftasks data prepare"):
        Trainer(model="gpt2_tiny", eval_dataset=str(tmp_path))


def test_split_folders_stand_for_their_dataset_and_a_swapped_split_is_named(tmp_path, tiny_dataset):
    """The guide's `--train_dataset DATA/train --eval_dataset DATA/eval` (what `mftasks data prepare` made)."""
    t = Trainer(model="gpt2_tiny", args={"output_dir": str(tmp_path)}, train_dataset=tiny_dataset / "train",
                eval_dataset=tiny_dataset / "eval")
    assert (t.train_dataset, t.eval_dataset) == (str(tiny_dataset), str(tiny_dataset))
    with pytest.raises(ConfigError) as err:
        Trainer(model="gpt2_tiny", train_dataset=tiny_dataset / "eval", eval_dataset=tiny_dataset / "train")
    msg = str(err.value)
    assert "2 problems" in msg
    assert (f"train_dataset: {tiny_dataset / 'eval'} is the eval split of the dataset {tiny_dataset}, but the train "
            f"split is read here: pass {tiny_dataset / 'train'} (or the dataset folder {tiny_dataset})") in msg
    assert f"eval_dataset: {tiny_dataset / 'train'} is the train split of the dataset {tiny_dataset}" in msg


def test_seq_length_mismatch_names_both(tmp_path, tiny_dataset):
    t = Trainer(model="gpt2", args={"output_dir": str(tmp_path)}, train_dataset=tiny_dataset)
    with pytest.raises(ConfigError, match=r"model gpt2 has seq_length 1024 but train_dataset .* --seq-length 64"):
        t.train()
    assert not (tmp_path / "checkpoint").exists()


def test_vocab_mismatch_of_explicit_config(tmp_path, tiny_dataset):
    from mftasks.model import GPT2Config

    cfg = GPT2Config.from_name("gpt2_tiny", vocab_size=999)
    with pytest.raises(ConfigError, match="vocab_size is 999 but train_dataset .* vocab_size 300"):
        Trainer(model=cfg, args={"output_dir": str(tmp_path)}, train_dataset=tiny_dataset).train()


@pytest.mark.parametrize("field, value, needle", [("batch_size", 0, "batch_size"),
                                                  ("learning_rate", 0.0, "learning_rate"),
                                                  ("learning_rate", -1.0, "learning_rate")])
def test_bad_training_arguments(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainingArguments(**{field: value})


def test_warmup_longer_than_training_warns_and_trains(tmp_path, tiny_dataset):
    """As MindFormers and transformers do (the guide's warmup_steps=100 on a short run)."""
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, save_steps=3, warmup_steps=100,
                             learning_rate=1e-3, batch_size=4)
    result = Trainer(model=TINY, args=args, train_dataset=tiny_dataset).train()
    assert result.steps == 3 and list((tmp_path / "checkpoint" / "rank_0").glob("*.ckpt"))
    log = (tmp_path / "log" / "rank_0" / "mindformer.log").read_text()
    assert ("WARNING mftasks: warmup_steps=100: more than the 3 training steps of this run, so the learning rate never "
            "reaches learning_rate=0.001 (it ends at 3e-05)") in log


def test_resume_without_checkpoint(tmp_path, tiny_dataset):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2)
    with pytest.raises(CheckpointError, match="no verified train checkpoint to resume from"):
        Trainer(model=TINY, args=args, train_dataset=tiny_dataset).train(resume_training=True)


def test_finetune_without_checkpoint(tmp_path, tiny_dataset):
    with pytest.raises(CheckpointError, match="no verified full-model checkpoint .* run train\\(\\) first"):
        Trainer(model=TINY, pet_method="lora", args={"output_dir": str(tmp_path)},
                train_dataset=tiny_dataset).finetune()


def test_checkpoint_of_another_shape(tmp_path, tiny_dataset):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, batch_size=2)
    Trainer(model=TINY, args=args, train_dataset=tiny_dataset).train()
    other = Trainer(model={"model_type": "gpt2_tiny", "n_layer": 3}, args=args, eval_dataset=tiny_dataset)
    with pytest.raises(CheckpointError, match=r"another shape: n_layer 2 \(checkpoint\) vs 3"):
        other.evaluate()


def test_eval_dataset_with_other_tokenizer(tmp_path, tiny_dataset, corpus_dir):
    from mftasks.data import PrepareSpec, prepare

    other = prepare(PrepareSpec(inputs=[str(corpus_dir)], output=str(tmp_path / "other"), vocab_size=300,
                                seq_length=64, seed=99, tokenizer_type="unigram"))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, batch_size=2)
    Trainer(model=TINY, args=args, train_dataset=tiny_dataset).train()
    with pytest.raises(DataError, match="tokenized with another tokenizer"):
        Trainer(model=TINY, args=args, eval_dataset=other.output).evaluate()


def test_ascend_requested_on_cpu():
    with pytest.raises(DeviceError, match=r"device_target='Ascend'.*Fix: use device_target=\"CPU\""):
        init_context(context_config=ContextConfig(device_target="Ascend"))


def test_parallel_config_needs_launcher_or_ascend(tmp_path):
    t = Trainer(model=TINY, args={"output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="single process accepts only a world size of 1.*mftasks launch"):
        t.set_parallel_config(data_parallel=2)
    with pytest.raises(ConfigError, match="Ascend"):
        t.set_parallel_config(model_parallel=2)
    t.set_parallel_config(data_parallel=1)


def test_unknown_keyword_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown argument"):
        Trainer(model=TINY, args={"output_dir": str(tmp_path)}, tokenizer="x")
    with pytest.raises(ConfigError, match=r"unknown key 'lerning_rate'.*learning_rate"):
        Trainer(model=TINY, args={"lerning_rate": 0.1})
