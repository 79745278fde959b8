"""GPT2Config and the GPT-2 network: names, numerics against numpy, causality, losses, GRAPH-mode training."""
from __future__ import annotations

import json
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mftasks.errors import ConfigError
from mftasks.model import (
    PRESETS,
    GPT2Config,
    GPT2EvalLoss,
    GPT2LMHeadModel,
    GPT2WithLoss,
    KVCache,
    num_parameters,
)
from tiny_model import mindspore_mode, tiny_config

ms.set_device("CPU")




@pytest.fixture(autouse=True)
def pynative():
    with mindspore_mode(ms.PYNATIVE_MODE):
        yield


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    """A tiny model with large random weights (so every op matters numerically), eval mode."""
    ms.set_seed(0)
    m = GPT2LMHeadModel(tiny_config())
    rng = np.random.default_rng(0)
    for p in m.get_parameters():
        value = rng.normal(0.0, 0.2, p.shape)
        if p.name.endswith("gamma"):
            value += 1.0
        p.set_data(ms.Tensor(value.astype(np.float32)))
    m.set_train(False)
    return m


def params_np(m) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy() for p in m.get_parameters()}


def numpy_forward(P: dict[str, np.ndarray], ids: np.ndarray, cfg: GPT2Config) -> np.ndarray:
    """Reference GPT-2 forward in float64 numpy: (B, T) ids -> (B, T, V) logits."""
    P = {k: v.astype(np.float64) for k, v in P.items()}
    B, T = ids.shape
    C, nh = cfg.n_embd, cfg.n_head
    hs = C // nh

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_epsilon) * P[name + ".gamma"] + P[name + ".beta"]

    def dense(x, name):
        return x @ P[name + ".weight"].T + P[name + ".bias"]

    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))

    x = P["transformer.wte.embedding_table"][ids] + P["transformer.wpe.embedding_table"][:T]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        q, k, v = np.split(dense(ln(x, h + "ln_1"), h + "attn.c_attn"), 3, axis=-1)
        q, k, v = (t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for t in (q, k, v))
        att = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs), -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + dense(y, h + "attn.c_proj")
        x = x + dense(gelu(dense(ln(x, h + "ln_2"), h + "mlp.c_fc")), h + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ P["transformer.wte.embedding_table"].T


# ------------------------------------------------------------------------------------------------- config
def test_presets_build_and_match_mindformers():
    for name in PRESETS:
        cfg = GPT2Config.from_name(name)
        assert cfg.name == name and cfg.n_embd == cfg.head_dim * cfg.n_head
    g = GPT2Config.from_name("gpt2")
    assert (g.n_layer, g.n_embd, g.n_head, g.seq_length, g.vocab_size) == (12, 768, 12, 1024, 50257)
    assert (g.lora_rank, g.lora_alpha, g.lora_dropout, g.lora_targets) == (64, 128.0, 0.1, ("q", "v"))
    assert (GPT2Config.from_name("gpt2_52b").n_embd, GPT2Config.from_name("gpt2_13b").seq_length) == (8192, 2048)
    tiny = GPT2Config.from_name("gpt2_tiny", dropout=0.0)
    assert (tiny.n_layer, tiny.n_embd, tiny.lora_rank, tiny.dropout) == (2, 64, 4, 0.0)


def test_from_name_errors_list_valid_choices():
    with pytest.raises(ConfigError) as e:
        GPT2Config.from_name("gpt3")
    assert "gpt2_small_cpu" in str(e.value) and "gpt2_tiny" in str(e.value)
    with pytest.raises(ConfigError) as e:
        GPT2Config.from_name("gpt2", n_layers=3, hidden=1)
    assert "n_layers" in str(e.value) and "hidden" in str(e.value)


def test_validation_collects_every_problem():
    with pytest.raises(ConfigError) as e:
        GPT2Config(n_layer=0, n_embd=100, n_head=3, seq_length=8, vocab_size=10, dropout=1.0, lora_targets=("q", "x"))
    problems = e.value.problems
    assert len(problems) == 4, problems
    text = str(e.value)
    for fragment in ("n_layer=0", "not divisible", "dropout=1.0", "'x'"):
        assert fragment in text


def test_to_dict_from_dict_round_trip_and_unknown_keys():
    cfg = GPT2Config.from_name("gpt2_small_cpu", lora_targets=("q", "k", "v"))
    again = GPT2Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.lora_targets == ("q", "k", "v")
    with pytest.raises(ConfigError) as e:
        GPT2Config.from_dict({**cfg.to_dict(), "n_layers": 2})
    assert "n_layers" in str(e.value)


# ------------------------------------------------------------------------------------------------ network
def test_parameter_names_and_count():
    cfg = tiny_config()
    m = GPT2LMHeadModel(cfg)
    per_block = ["ln_1.gamma", "ln_1.beta", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.gamma", "ln_2.beta", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    expected = {"transformer.wte.embedding_table", "transformer.wpe.embedding_table", "transformer.ln_f.gamma",
                "transformer.ln_f.beta"} | {f"transformer.h.{i}.{n}" for i in range(2) for n in per_block}
    assert {p.name for p in m.get_parameters()} == expected
    assert m.transformer.h[0].attn.c_attn.weight.shape == (3 * 64, 64)  # (out, in)
    C, V, S = 64, 100, 32
    assert num_parameters(m) == V * C + S * C + 2 * (12 * C * C + 13 * C) + 2 * C  # LM head tied: no extra
    wrapped = GPT2WithLoss(m)  # wrappers keep the bare model's names
    assert {p.name for p in wrapped.get_parameters()} == expected


def test_same_seed_same_weights():
    ms.set_seed(123)
    a = params_np(GPT2LMHeadModel(tiny_config()))
    ms.set_seed(123)
    b = params_np(GPT2LMHeadModel(tiny_config()))
    ms.set_seed(124)
    c = params_np(GPT2LMHeadModel(tiny_config()))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"])
    std = a["transformer.h.0.attn.c_attn.weight"].std()
    proj_std = a["transformer.h.0.attn.c_proj.weight"].std()
    assert 0.015 < std < 0.025 and proj_std < std / 1.5  # c_proj scaled by 1/sqrt(2 n_layer)


def test_forward_matches_numpy_reference(model):
    ids = np.random.default_rng(1).integers(0, 100, (2, 32)).astype(np.int32)
    logits = model(ms.Tensor(ids))
    assert logits.shape == (2, 32, 100) and logits.dtype == ms.float32
    ref = numpy_forward(params_np(model), ids, model.config)
    np.testing.assert_allclose(logits.asnumpy(), ref, atol=1e-4, rtol=1e-4)


def test_causal(model):
    ids = np.random.default_rng(2).integers(0, 100, (1, 32)).astype(np.int32)
    changed = ids.copy()
    changed[0, 20] = (ids[0, 20] + 1) % 100
    a, b = model(ms.Tensor(ids)).asnumpy(), model(ms.Tensor(changed)).asnumpy()
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert np.abs(a[:, 20:] - b[:, 20:]).max() > 1e-3


def test_forward_with_cache_matches_full_forward(model):
    ids = np.random.default_rng(3).integers(0, 100, (2, 9)).astype(np.int32)
    full = model(ms.Tensor(ids)).asnumpy()
    cache = KVCache.empty(model, 2)
    # prefill 5 tokens, then one token at a time; row 1 reads its logits at another index
    logits, k, v = model.forward_with_cache(ms.Tensor(ids[:, :5]), ms.Tensor(np.zeros(2, np.int32)),
                                            ms.Tensor(np.array([4, 2], np.int32)), cache.k, cache.v)
    assert k.shape == (2, 2, 2, 32, 32)
    np.testing.assert_allclose(logits.asnumpy(), full[[0, 1], [4, 2]], atol=1e-5)
    for t in range(5, 9):
        logits, k, v = model.forward_with_cache(ms.Tensor(ids[:, t : t + 1]), ms.Tensor(np.array([t, t], np.int32)),
                                                ms.Tensor(np.zeros(2, np.int32)), k, v)
        np.testing.assert_allclose(logits.asnumpy(), full[:, t], atol=1e-5)


def test_untrained_loss_is_ln_vocab():
    ms.set_seed(0)
    m = GPT2LMHeadModel(tiny_config())
    m.set_train(False)
    ids = np.random.default_rng(4).integers(0, 100, (4, 33)).astype(np.int32)
    loss = GPT2WithLoss(m)(ms.Tensor(ids), ms.Tensor(np.ones_like(ids))).asnumpy()
    assert loss.shape == () and abs(float(loss) - math.log(100)) < 0.1


def test_masked_loss_and_eval_loss(model):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 100, (3, 33)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 20:] = 0  # padded tail
    mask[2, 5:] = 0
    logits = numpy_forward(params_np(model), ids[:, :-1], model.config)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None].astype(np.int64), axis=-1)[..., 0]  # (B, T)
    label_mask = mask[:, 1:]
    expected = (nll * label_mask).sum() / label_mask.sum()
    loss = GPT2WithLoss(model)(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    total, count = GPT2EvalLoss(model)(ms.Tensor(ids), ms.Tensor(mask))
    assert float(count.asnumpy()) == label_mask.sum()
    np.testing.assert_allclose(total.asnumpy(), (nll * label_mask).sum(), rtol=1e-4)


def test_train_one_step_cell_graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    m = GPT2LMHeadModel(tiny_config(dropout=0.1, attention_dropout=0.1))
    names = {p.name for p in m.get_parameters()}
    step = nn.TrainOneStepCell(GPT2WithLoss(m), nn.AdamWeightDecay(m.trainable_params(), learning_rate=1e-3))
    step.set_train()
    ids = np.random.default_rng(6).integers(0, 100, (4, 33)).astype(np.int32)
    mask = np.ones_like(ids)
    losses = [float(step(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()) for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.3, losses
    assert {p.name for p in m.get_parameters()} == names
