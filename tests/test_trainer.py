"""The Trainer: MindFormers output layout, manifests, resume, LoRA, evaluation and prediction."""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from mftasks import Trainer, TrainingArguments
from mftasks import checkpoint as ckpt
from mftasks import weights
from mftasks.errors import ConfigError

TINY = {"model_type": "gpt2_tiny", "dropout": 0.0, "attention_dropout": 0.0}


def _args(out, **kw):
    base = dict(output_dir=str(out), batch_size=4, learning_rate=1e-3, warmup_steps=1, max_steps=6, save_steps=3,
                logging_steps=1, sink_mode=False, seed=7)  # a loss line every step
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, tiny_finetune_dataset):
    """One output dir with a train run (6 steps) and a LoRA finetune (4 steps) on top of it."""
    out = tmp_path_factory.mktemp("trained") / "output"
    Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()
    lora = Trainer(model=TINY, pet_method="lora", args=_args(out, max_steps=4, save_steps=2),
                   train_dataset=tiny_finetune_dataset, eval_dataset=tiny_finetune_dataset)
    result = lora.finetune()
    return out, result


def test_train_writes_mindformers_layout_with_manifests(trained, tiny_dataset):
    from mftasks.data import read_manifest

    out, _ = trained
    folder = out / "checkpoint" / "rank_0"
    full = sorted(p.name for p in folder.glob("mindformers_rank_0-*.ckpt"))
    assert full == ["mindformers_rank_0-1_3.ckpt", "mindformers_rank_0-1_6.ckpt"]
    m = ckpt.read_manifest(folder / "mindformers_rank_0-1_6.ckpt")
    ds = read_manifest(tiny_dataset)
    assert m["kind"] == "full" and m["global_step"] == 6 and m["epoch"] == 1 and m["step_in_epoch"] == 6
    assert m["dataset_id"] == ds["dataset_id"] and m["tokenizer"]["sha256"] == ds["tokenizer"]["sha256"]
    assert m["parent"] is None and m["pet_method"] == "" and m["model_config"]["name"] == "gpt2_tiny"
    assert m["model_config"]["vocab_size"] == ds["tokenizer"]["vocab_size"]  # the vocabulary follows the data
    assert not ckpt.verify(folder / "mindformers_rank_0-1_6.ckpt")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["last_ckpt_file"].startswith("mindformers_lora_rank_0-")
    logs = out / "log" / "rank_0"
    assert "train finished: 6 steps" in (logs / "mindformer.log").read_text()
    lines = [json.loads(l) for l in (logs / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l["stage"] == "train"]
    assert [l["step"] for l in train] == [1, 2, 3, 4, 5, 6]
    assert all(set(l) >= {"step", "loss", "lr", "tokens_per_s", "wall_time"} for l in train)
    assert train[0]["lr"] == pytest.approx(1e-3)  # one warmup step reaches the peak
    beat = json.loads((logs / "heartbeat.json").read_text())
    assert beat["step"] == 4 and beat["pid"] == os.getpid()


def test_lora_finetune_saves_only_adapter_with_base_reference(trained):
    import mindspore as ms

    out, result = trained
    m = ckpt.read_manifest(result.checkpoint)
    assert m["kind"] == "lora_adapter" and m["pet_method"] == "lora"
    base = out / "checkpoint" / "rank_0" / "mindformers_rank_0-1_6.ckpt"
    assert m["base"]["path"] == str(base.resolve()) and m["base"]["sha256"] == ckpt.read_manifest(base)["sha256"]
    assert m["lora_config"]["rank"] == 4 and m["lora_config"]["targets"] == ["q", "v"]
    names = set(ms.load_checkpoint(str(result.checkpoint)))
    model_names = {n for n in names if not n.startswith(("adam_", "global_step", "learning_rate", "beta"))}
    assert model_names and all(".lora_" in n for n in model_names)
    assert os.path.getsize(result.checkpoint) < os.path.getsize(base) / 5


def test_lora_trains_only_adapter_parameters(tiny_dataset):
    from mftasks.model import GPT2Config, GPT2LMHeadModel, LoraConfig, apply_lora, mark_only_lora_as_trainable

    cfg = GPT2Config.from_name("gpt2_tiny", vocab_size=300)
    net = mark_only_lora_as_trainable(apply_lora(GPT2LMHeadModel(cfg), LoraConfig.from_model_config(cfg)))
    trainable = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    assert trainable == cfg.n_layer * 2 * (2 * cfg.lora_rank * cfg.n_embd)  # q and v: A (r, C) + B (C, r) each


def test_evaluate_is_token_weighted_mean(trained, tiny_dataset):
    from mftasks.data import load
    from mftasks.model import GPT2EvalLoss

    out, _ = trained
    first = out / "checkpoint" / "rank_0" / "mindformers_rank_0-1_6.ckpt"
    trainer = Trainer(model=TINY, args=_args(out, batch_size=3), eval_dataset=tiny_dataset)
    metrics = trainer.evaluate(eval_checkpoint=str(first))
    assert set(metrics) == {"loss", "PPL"} and metrics["PPL"] == pytest.approx(math.exp(metrics["loss"]))
    net = weights.network_of(ckpt.load_verified(first))  # the weights evaluate() used
    net.set_train(False)
    cell = GPT2EvalLoss(net)
    per_sample = [float(cell(ids, mask)[0].asnumpy()) / 64 for ids, mask in
                  load(tiny_dataset, 1, shuffle=False, split="eval").create_tuple_iterator(num_epochs=1)]
    assert len(per_sample) % 3 != 0  # a short last batch: a per-batch mean would differ
    assert metrics["loss"] == pytest.approx(np.mean(per_sample), rel=1e-5)


def test_finetune_lowers_eval_loss_on_its_domain(trained, tiny_finetune_dataset):
    out, result = trained
    t = Trainer(model=TINY, pet_method="lora", args=_args(out), eval_dataset=tiny_finetune_dataset)
    base = out / "checkpoint" / "rank_0" / "mindformers_rank_0-1_6.ckpt"
    before = t.evaluate(eval_checkpoint=str(base))["loss"]
    after = t.evaluate()["loss"]  # newest checkpoint: the adapter over its base
    assert after < before


def test_predict_uses_newest_checkpoint_and_mindformers_shape(trained):
    out, _ = trained
    t = Trainer(model=TINY, args=_args(out))
    one = t.predict(input_data="hello!", max_new_tokens=5)
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"text_generation_text"}
    assert one[0]["text_generation_text"][0].startswith("hello!")
    two = t.predict(input_data=["Question: What is 1 plus 2?\nAnswer:", "a"], max_length=40)
    assert len(two) == 2 and all(isinstance(r["text_generation_text"][0], str) for r in two)
    again = t.predict(input_data="hello!", max_new_tokens=5)
    assert again == one  # greedy is deterministic


def test_predict_from_a_text_file_in_batches_writes_mindformers_result_file(trained, tmp_path):
    out, _ = trained
    prompts = ["Question: What is 1 plus 2?\nAnswer:", "a", "hello!"]
    lines = tmp_path / "input_predict_data.txt"
    lines.write_text(prompts[0].replace("\n", " ") + "\n\n" + "\n".join(prompts[1:]) + "\n")  # a blank line
    t = Trainer(model=TINY, args=_args(out))
    from_file = t.predict(input_data=str(lines), max_new_tokens=4, batch_size=2)
    texts = [prompts[0].replace("\n", " "), *prompts[1:]]
    assert [r["text_generation_text"][0][:len(p)] for r, p in zip(from_file, texts)] == texts
    written = (out / "text_generation_result.txt").read_text().splitlines()
    assert written == [str(r) for r in from_file]  # MindFormers' format: one result a line
    assert t.predict(input_data=texts, max_new_tokens=4, batch_size=1) == from_file  # greedy: batching changes nothing
    assert t.predict(input_data=texts, max_new_tokens=4) == from_file


def test_predict_never_replaces_a_result_file_it_did_not_write(tmp_path, trained):
    out, _ = trained
    own = tmp_path / "out"
    shutil.copytree(out / "checkpoint", own / "checkpoint")
    (own / "text_generation_result.txt").write_text("the user's notes\n")
    with pytest.raises(ConfigError, match="text_generation_result.txt exists and is not a predict's results; "
                                          "move it away"):
        Trainer(model=TINY, args=_args(own)).predict(input_data="hello!", max_new_tokens=2)
    assert (own / "text_generation_result.txt").read_text() == "the user's notes\n"


def test_predict_refuses_an_empty_file_and_a_bad_batch_size(trained, tmp_path):
    out, _ = trained
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    t = Trainer(model=TINY, args=_args(out))
    with pytest.raises(ConfigError, match="holds no prompt"):
        t.predict(input_data=str(empty))
    with pytest.raises(ConfigError, match=r"batch_size=0 must be a positive integer"):
        t.predict(input_data="hello!", batch_size=0)


def test_predict_input_longer_than_context_is_an_error(trained):
    out, _ = trained
    with pytest.raises(ConfigError, match=r"is \d+ tokens; the model's context is 64 tokens"):
        Trainer(model=TINY, args=_args(out)).predict(input_data="word " * 200)


def test_resume_gives_the_same_final_loss_as_a_straight_run(tmp_path, tiny_dataset):
    straight = Trainer(model=TINY, args=_args(tmp_path / "a", max_steps=8, save_steps=4),
                       train_dataset=tiny_dataset).train()
    first = Trainer(model=TINY, args=_args(tmp_path / "b", max_steps=4, save_steps=4), train_dataset=tiny_dataset)
    first.train()
    # Same run, longer horizon: the schedule is the 8-step one, so the first half must use it too.
    half = Trainer(model=TINY, args=_args(tmp_path / "c", max_steps=8, save_steps=4), train_dataset=tiny_dataset)
    shutil.copytree(tmp_path / "a" / "checkpoint" / "rank_0", tmp_path / "c" / "checkpoint" / "rank_0")
    for p in (tmp_path / "c" / "checkpoint" / "rank_0").glob("*-1_8.*"):
        p.unlink()
    resumed = half.train(resume_training=True)
    assert resumed.first_step == 4 and resumed.steps == 4
    assert resumed.final_loss == pytest.approx(straight.final_loss, abs=1e-6)


def test_resume_falls_back_when_newest_checkpoint_is_truncated(tmp_path, tiny_dataset):
    args = _args(tmp_path, max_steps=6, save_steps=2)
    Trainer(model=TINY, args=args, train_dataset=tiny_dataset).train()
    newest = tmp_path / "checkpoint" / "rank_0" / "mindformers_rank_0-1_6.ckpt"
    os.chmod(newest, 0o600)
    newest.write_bytes(newest.read_bytes()[:1000])
    result = Trainer(model=TINY, args=args.replace(max_steps=6), train_dataset=tiny_dataset).train(
        resume_training=True)
    assert result.first_step == 4 and result.steps == 2
    log = (tmp_path / "log" / "rank_0" / "mindformer.log").read_text()
    assert "skipping checkpoint mindformers_rank_0-1_6.ckpt" in log and "truncated" in log


def test_save_total_limit_keeps_the_newest(tmp_path, tiny_dataset):
    Trainer(model=TINY, args=_args(tmp_path, max_steps=8, save_steps=2, save_total_limit=2),
            train_dataset=tiny_dataset).train()
    names = sorted(p.name for p in (tmp_path / "checkpoint" / "rank_0").glob("*.ckpt"))
    assert names == ["mindformers_rank_0-1_6.ckpt", "mindformers_rank_0-1_8.ckpt"]


def test_save_strategy_no_saves_nothing_and_sink_mode_reports_once_a_sink(tmp_path, tiny_dataset):
    result = Trainer(model=TINY, args=_args(tmp_path, max_steps=5, save_strategy="no", sink_mode=True, sink_size=2),
                     train_dataset=tiny_dataset).train()
    assert result.steps == 5 and result.checkpoint is None
    rank_dir = tmp_path / "checkpoint" / "rank_0"
    assert not rank_dir.exists() or not list(rank_dir.glob("*.ckpt"))
    log = (tmp_path / "log" / "rank_0" / "mindformer.log").read_text()
    assert "save_strategy='no': this run saves no checkpoint" in log
    rows = [json.loads(line) for line in (tmp_path / "log" / "rank_0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 5]  # a loss line a sink of 2 steps, and the last step


def test_save_strategy_epoch_saves_at_each_epochs_end(tmp_path, tiny_dataset):
    from mftasks.data.loader import batches_per_epoch

    per_epoch = batches_per_epoch(json.loads((tiny_dataset / "manifest.json").read_text())["splits"]["train"]["samples"], 4)
    Trainer(model=TINY, args=_args(tmp_path, max_steps=per_epoch + 1, save_strategy="epoch", save_total_limit=None),
            train_dataset=tiny_dataset).train()
    names = sorted(p.name for p in (tmp_path / "checkpoint" / "rank_0").glob("*.ckpt"))
    assert names == [f"mindformers_rank_0-1_{per_epoch}.ckpt", "mindformers_rank_0-2_1.ckpt"]


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path, tiny_dataset):
    import mindspore as ms

    big = Trainer(model=TINY, args=_args(tmp_path / "big", batch_size=4, max_steps=3, save_steps=3, shuffle=False),
                  train_dataset=tiny_dataset).train()
    acc = Trainer(model=TINY, args=_args(tmp_path / "acc", batch_size=2, gradient_accumulation_steps=2, max_steps=3,
                                         save_steps=3, shuffle=False), train_dataset=tiny_dataset).train()
    a = ms.load_checkpoint(str(big.checkpoint))
    b = ms.load_checkpoint(str(acc.checkpoint))
    name = "transformer.h.1.mlp.c_fc.weight"
    assert np.allclose(a[name].asnumpy(), b[name].asnumpy(), atol=1e-5)


def test_training_again_without_resume_is_refused(trained, tiny_dataset):
    out, _ = trained
    with pytest.raises(ConfigError, match="already holds 2 train checkpoint.*resume_training=True.*overwrite_output_dir"):
        Trainer(model=TINY, args=_args(out), train_dataset=tiny_dataset).train()


def test_yaml_args(tmp_path, tiny_dataset):
    t = Trainer(model="gpt2_tiny", args="configs/gpt2/run_gpt2_tiny.yaml", train_dataset=tiny_dataset)
    assert t.args.max_steps == 4 and t.args.batch_size == 2


def test_trainer_reads_in_one_sitting():
    """trainer.py stays short, and no other module reaches into it for a private name (issue 12)."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    assert len((repo / "mftasks" / "trainer.py").read_text(encoding="utf-8").splitlines()) < 350
    private = re.compile(r"trainer import [^\n]*\b_[a-z]|\btrainer\._[a-z]")
    found = [f"{p.relative_to(repo)}: {m.group(0)}" for d in ("mftasks", "flows", "tests", "bench", "examples")
             for p in sorted((repo / d).rglob("*.py")) if p != Path(__file__).resolve()
             for m in private.finditer(p.read_text(encoding="utf-8"))]
    assert found == []
