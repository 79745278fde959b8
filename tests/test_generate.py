"""Generation: samplers on hand-made logits, KV cache vs recomputation, batching, stopping, GRAPH compiles."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from mftasks.errors import ConfigError
from mftasks.model import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2WithCache,
    apply_repetition_penalty,
    generate,
    next_token,
    sample,
)
from tiny_model import mindspore_mode, tiny_config

ms.set_device("CPU")
PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]
N_NEW = 8


@pytest.fixture(autouse=True)
def graph_mode():
    """GRAPH mode, as in production: a few compiles (~1 s each), then fast steps; PyNative is checked once."""
    with mindspore_mode(ms.GRAPH_MODE):
        yield


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    # A large init makes an untrained model's greedy output varied (with 0.02 it repeats the last token).
    ms.set_seed(0)
    return GPT2LMHeadModel(tiny_config(initializer_range=0.5))


@pytest.fixture(scope="module")
def batched(model) -> list[list[int]]:
    """Greedy continuations of PROMPTS, batched, with the cache, in GRAPH mode."""
    with mindspore_mode(ms.GRAPH_MODE):
        return generate(model, PROMPTS, N_NEW, eos_id=None)


# ---------------------------------------------------------------------------------------------- samplers
LOGITS = np.array([[1.0, 3.0, 2.5, -1.0, 0.5], [0.2, -2.0, 0.1, 4.0, 3.9]], dtype=np.float32)
GREEDY = [1, 3]


def test_top_k_1_and_tiny_top_p_are_greedy():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert sample(LOGITS, rng, top_k=1).tolist() == GREEDY
        assert sample(LOGITS, rng, top_p=1e-6).tolist() == GREEDY
        assert sample(LOGITS, rng, temperature=1e-4).tolist() == GREEDY
    assert next_token(LOGITS, [[], []], np.random.default_rng(0)).tolist() == GREEDY


def test_top_k_and_top_p_restrict_the_support():
    rng = np.random.default_rng(0)
    draws = np.stack([sample(LOGITS, rng, top_k=2) for _ in range(300)])
    assert set(draws[:, 0]) == {1, 2} and set(draws[:, 1]) == {3, 4}
    # row 0 probabilities ~ [.10, .51, .31, .01, .06]: top_p=0.7 keeps tokens 1 and 2 only
    draws = np.stack([sample(LOGITS, rng, top_p=0.7) for _ in range(300)])
    assert set(draws[:, 0]) == {1, 2}
    a = [sample(LOGITS, np.random.default_rng(5), top_k=3).tolist() for _ in range(2)]
    assert a[0] == a[1]  # same seed, same draw


def test_repetition_penalty_lowers_seen_tokens():
    history = [[1, 3], [3, 1, 1]]
    penalised = apply_repetition_penalty(LOGITS, history, 2.0)
    np.testing.assert_allclose(penalised[0], [1.0, 1.5, 2.5, -2.0, 0.5])  # positive /2, negative *2
    np.testing.assert_allclose(penalised[1], [0.2, -4.0, 0.1, 2.0, 3.9])
    probs = lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)  # noqa: E731
    assert probs(penalised)[0, 1] < probs(LOGITS)[0, 1] and probs(penalised)[0, 3] < probs(LOGITS)[0, 3]
    assert next_token(LOGITS, history, np.random.default_rng(0), repetition_penalty=2.0).tolist() == [2, 4]
    assert np.array_equal(apply_repetition_penalty(LOGITS, history, 1.0), LOGITS)


# -------------------------------------------------------------------------------------------- generation
def test_batched_equals_each_prompt_alone(model, batched):
    assert [len(x) for x in batched] == [N_NEW] * 3
    assert len({t for row in batched for t in row}) > 5  # not a degenerate repeat
    assert batched == [generate(model, [p], N_NEW, eos_id=None)[0] for p in PROMPTS]


def test_cache_equals_recompute_and_naive_loop(model, batched):
    assert generate(model, PROMPTS, N_NEW, eos_id=None, use_cache=False) == batched
    # independent reference: the plain causal forward on a right-padded fixed-length buffer, argmax
    model.set_train(False)
    seq = list(PROMPTS[1])
    for _ in range(N_NEW):
        buf = np.zeros((1, 32), np.int32)
        buf[0, : len(seq)] = seq
        seq.append(int(np.argmax(model(ms.Tensor(buf)).asnumpy()[0, len(seq) - 1])))
    assert seq[len(PROMPTS[1]) :] == batched[1]


def test_stops_at_eos_and_when_context_is_full(model, batched):
    eos = batched[1][3]
    out = generate(model, PROMPTS, N_NEW, eos_id=eos)
    assert out[1] == batched[1][:3]  # EOS itself not returned
    for row, full in zip(out, batched):
        assert row == full[: full.index(eos)] if eos in full else row == full
    assert generate(model, [[1] * 30, [2]], N_NEW, eos_id=None)[0].__len__() == 2  # 30 + 2 = seq_length
    assert generate(model, [[1] * 32], N_NEW, eos_id=None) == [[]]
    assert generate(model, PROMPTS, 0, eos_id=None) == [[], [], []]


def test_repetition_penalty_and_sampling_in_generate(model, batched):
    penalised = generate(model, PROMPTS, N_NEW, eos_id=None, repetition_penalty=1.5)
    assert all(len(r) == N_NEW for r in penalised) and penalised != batched
    model.set_train(True)
    a = generate(model, PROMPTS, 4, eos_id=None, do_sample=True, top_k=10, top_p=0.9, temperature=0.8, seed=1)
    b = generate(model, PROMPTS, 4, eos_id=None, do_sample=True, top_k=10, top_p=0.9, temperature=0.8, seed=1)
    assert a == b and model.training  # reproducible; training flag restored


def test_invalid_arguments_collected(model):
    with pytest.raises(ConfigError) as e:
        generate(model, [[1] * 33, [], [500]], -1, eos_id=None, top_p=0.0, top_k=-1)
    assert len(e.value.problems) == 6, e.value.problems


def test_graph_mode_compiles_prefill_once_and_decode_once():
    ms.set_seed(1)
    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, seq_length=16, vocab_size=50))
    generate(m, [[1, 2, 3], [4]], 6, eos_id=None)
    cell = m.__dict__["_generate_cells"][GPT2WithCache][1]
    assert len(cell.compile_cache) == 2  # (2, 3) prefill + (2, 1) decode, not one graph per token
    generate(m, [[3, 2, 1], [5]], 9, eos_id=None)
    assert len(cell.compile_cache) == 2  # same shapes: nothing recompiled


def test_pynative_gives_the_same_tokens(model, batched):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert generate(model, PROMPTS, 3, eos_id=None) == [row[:3] for row in batched]
