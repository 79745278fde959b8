"""LoRA: config, wrapper names and slices, trainable count, merging (in the model and on numpy dicts)."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mftasks.errors import CheckpointError, ConfigError
from mftasks.model import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2WithLoss,
    LoraConfig,
    LoRADense,
    apply_lora,
    lora_filter,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora_state,
    merge_lora_weights,
    num_parameters,
)
from tiny_model import mindspore_mode, tiny_config

ms.set_device("CPU")
C, N_LAYER = 64, 2




@pytest.fixture(autouse=True)
def pynative():
    with mindspore_mode(ms.PYNATIVE_MODE):
        yield


def lora_model(targets=("q", "v"), rank=4, seed=0, random_b=True) -> GPT2LMHeadModel:
    """A tiny model with LoRA applied; random (non-zero) B when random_b."""
    ms.set_seed(seed)
    m = apply_lora(GPT2LMHeadModel(tiny_config()), LoraConfig(rank=rank, alpha=8, dropout=0.0, targets=targets))
    if random_b:
        rng = np.random.default_rng(seed)
        for p in m.get_parameters():
            if ".lora_b_" in p.name:
                p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    m.set_train(False)
    return m


def logits(m, ids) -> np.ndarray:
    return m(ms.Tensor(ids)).asnumpy()


IDS = np.random.default_rng(7).integers(0, 100, (2, 16)).astype(np.int32)


# ------------------------------------------------------------------------------------------------- config
def test_lora_config_validation_lists_valid_targets():
    with pytest.raises(ConfigError) as e:
        LoraConfig(rank=0, alpha=8, dropout=1.0, targets=("q", "query"))
    assert len(e.value.problems) == 3
    assert "'query'" in str(e.value) and "mlp_proj" in str(e.value) and "attn_proj" in str(e.value)


def test_lora_config_from_model_config():
    cfg = LoraConfig.from_model_config(GPT2Config.from_name("gpt2"))
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, cfg.scale) == (64, 128.0, 0.1, ("q", "v"), 2.0)
    cfg = LoraConfig.from_model_config(GPT2Config.from_name("gpt2_tiny"), rank=2, targets=["k"])
    assert (cfg.rank, cfg.alpha, cfg.targets) == (2, 8.0, ("k",))
    with pytest.raises(ConfigError) as e:
        LoraConfig.from_model_config(GPT2Config.from_name("gpt2_tiny"), r=2)
    assert "r" in e.value.problems[0]


# --------------------------------------------------------------------------------------------- the layers
def test_names_keep_base_and_base_checkpoint_loads(tmp_path):
    ms.set_seed(0)
    base = GPT2LMHeadModel(tiny_config())
    base_names = {p.name for p in base.get_parameters()}
    ckpt = tmp_path / "base.ckpt"
    ms.save_checkpoint(base, str(ckpt))
    m = lora_model(targets=("q", "v", "mlp_proj"), seed=1, random_b=False)
    names = {p.name for p in m.get_parameters()}
    added = {f"transformer.h.{i}.{layer}.lora_{ab}_{t}" for i in range(N_LAYER) for ab in "ab"
             for layer, t in (("attn.c_attn", "q"), ("attn.c_attn", "v"), ("mlp.c_proj", "mlp_proj"))}
    assert names == base_names | added
    assert "transformer.h.0.attn.c_attn.weight" in names
    assert {n for n in names if lora_filter(n)} == added
    not_loaded, _ = ms.load_param_into_net(m, ms.load_checkpoint(str(ckpt)))
    assert set(not_loaded) == added
    np.testing.assert_array_equal(logits(m, IDS), logits(base.set_train(False), IDS))  # B = 0: same model
    a = m.transformer.h[0].attn.c_attn.lora_a_q
    assert a.shape == (4, C) and np.abs(a.asnumpy()).max() > 0
    assert m.transformer.h[0].attn.c_attn.lora_b_v.shape == (C, 4)


def test_fused_qkv_touches_only_q_and_v_slices():
    m = lora_model(targets=("q", "v"))
    layer = m.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoRADense)
    x = ms.Tensor(np.random.default_rng(8).normal(size=(2, 5, C)).astype(np.float32))
    with_lora = layer(x).asnumpy()
    plain = ms.ops.dense(x, layer.weight, layer.bias).asnumpy()
    q, k, v = (slice(0, C), slice(C, 2 * C), slice(2 * C, 3 * C))
    np.testing.assert_array_equal(with_lora[..., k], plain[..., k])
    assert np.abs(with_lora[..., q] - plain[..., q]).max() > 1e-3
    assert np.abs(with_lora[..., v] - plain[..., v]).max() > 1e-3


def test_trainable_parameter_count_formula():
    r = 4
    m = lora_model(targets=("q", "v", "mlp_fc"), rank=r, random_b=False)
    mark_only_lora_as_trainable(m)
    per_layer = r * (C + C) * 2 + r * (C + 4 * C)  # q and v: (r, C) + (C, r); mlp_fc: (r, C) + (4C, r)
    assert num_parameters(m, trainable_only=True) == N_LAYER * per_layer
    assert all(lora_filter(p.name) for p in m.trainable_params())
    assert sorted(lora_state_dict(m)) == sorted(p.name for p in m.trainable_params())


def test_misuse_raises():
    m = lora_model(random_b=False)
    with pytest.raises(ConfigError, match="already"):
        apply_lora(m, LoraConfig(rank=2, alpha=2))
    with pytest.raises(ConfigError, match="apply_lora"):
        mark_only_lora_as_trainable(GPT2LMHeadModel(tiny_config()))
    assert lora_filter("transformer.h.0.attn.c_attn.lora_a_q")
    assert not lora_filter("transformer.h.0.attn.c_attn.weight")


# ---------------------------------------------------------------------------------------------- merging
def test_merge_keeps_logits_and_is_idempotent():
    m = lora_model(targets=("q", "v", "attn_proj", "mlp_fc"))
    before = logits(m, IDS)
    merge_lora_weights(m)
    assert all(c.merged for _, c in m.cells_and_names() if isinstance(c, LoRADense))
    w_once = m.transformer.h[1].attn.c_attn.weight.asnumpy().copy()
    np.testing.assert_allclose(logits(m, IDS), before, atol=1e-4)
    merge_lora_weights(m)  # second call: nothing changes
    np.testing.assert_array_equal(m.transformer.h[1].attn.c_attn.weight.asnumpy(), w_once)
    np.testing.assert_allclose(logits(m, IDS), before, atol=1e-4)


def test_merge_lora_state_equals_merge_lora_weights():
    targets = ("q", "k", "v", "mlp_proj")
    m = lora_model(targets=targets, seed=3)
    base = {p.name: p.asnumpy().copy() for p in m.get_parameters() if not lora_filter(p.name)}
    adapter = lora_state_dict(m)
    merged = merge_lora_state(base, adapter, LoraConfig(rank=4, alpha=8, targets=targets))
    merge_lora_weights(m)
    assert set(merged) == set(base)
    for p in m.get_parameters():
        if not lora_filter(p.name):
            np.testing.assert_allclose(merged[p.name], p.asnumpy(), atol=1e-6, err_msg=p.name)
    assert not np.array_equal(merged["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])


def test_merge_lora_state_reports_shape_mismatch():
    m = lora_model(seed=4)
    base = {p.name: p.asnumpy() for p in m.get_parameters() if not lora_filter(p.name)}
    adapter = lora_state_dict(m)
    key = "transformer.h.1.attn.c_attn.lora_b_v"
    adapter[key] = np.zeros((C + 1, 4), np.float32)
    with pytest.raises(CheckpointError) as e:
        merge_lora_state(base, adapter, LoraConfig(rank=4, alpha=8))
    text = str(e.value)
    assert "transformer.h.1.attn.c_attn" in text and "(192, 64)" in text and "(65, 4)" in text
    with pytest.raises(CheckpointError, match="rank 8"):
        merge_lora_state(base, lora_state_dict(m), LoraConfig(rank=8, alpha=8))


# --------------------------------------------------------------------------------------------- training
def test_lora_training_graph_mode_updates_only_adapters():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    m = apply_lora(GPT2LMHeadModel(tiny_config()), LoraConfig(rank=4, alpha=8, dropout=0.1, targets=("q", "v")))
    mark_only_lora_as_trainable(m)
    before = {p.name: p.asnumpy().copy() for p in m.get_parameters()}
    step = nn.TrainOneStepCell(GPT2WithLoss(m), nn.AdamWeightDecay(m.trainable_params(), learning_rate=1e-2))
    step.set_train()
    ids = np.random.default_rng(9).integers(0, 100, (4, 33)).astype(np.int32)
    losses = [float(step(ms.Tensor(ids), ms.Tensor(np.ones_like(ids))).asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0], losses
    for p in m.get_parameters():
        changed = not np.array_equal(before[p.name], p.asnumpy())
        assert changed == lora_filter(p.name), p.name
