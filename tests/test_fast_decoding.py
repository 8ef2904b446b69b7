"""Block-wise decoding: K/V caches (prefix, dual), parallel rules (threshold, factor, entropy budget), suffix window,
early exit, against the exact sampler and plain-numpy references of each rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.ops.rows_attention import rows_attention
from dlm_jax.sampling.blocks import forward_cost
from dlm_jax.sampling.config import GenerateConfig
from dlm_jax.sampling.loop import generate
from dlm_jax.sampling.parallel import entropy_budget_rule, factor_rule, threshold_rule

MASK, EOS = 63, 29
IDS = jnp.array([[0, 0, 5, 6, 7], [1, 9, 10, 11, 12]])  # left-padded first row
PAD = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])


def tiny(shifted: bool) -> tuple[ModelConfig, dict]:
    """A GQA model (4 query heads, 2 K/V heads), shifted like Dream or unshifted like LLaDA."""
    config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64, mask_token_id=MASK, eos_token_id=EOS, logit_shift=shifted,
                         rope_theta=10000.0 if shifted else 10.0)  # fast rotations: masks differ by position
    params = decoder.init(jax.random.key(1 if shifted else 2), config)
    # weights x10 (std 0.2): peaked, position-dependent predictions, so confidences have no near-ties
    return config, jax.tree.map(lambda w: w * 10 if w.ndim >= 2 else w, params)


def run(model, **knobs):
    config, params = model
    return generate(params, config, IDS, PAD, GenerateConfig(output_history=True, **knobs), jax.random.key(3))


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))
    np.testing.assert_array_equal(np.asarray(a.history), np.asarray(b.history))
    np.testing.assert_array_equal(np.asarray(a.nfe), np.asarray(b.nfe))


# ---- plain-numpy references of the rules --------------------------------------------------------------------------
def np_order(scores, pending):
    idx = np.flatnonzero(pending)
    return idx[np.argsort(-scores[idx], kind="stable")]


def np_threshold(prob, pending, tau):
    out = pending & (prob >= tau)
    if pending.any():
        out[np_order(prob, pending)[0]] = True
    return out


def np_factor(prob, pending, factor):
    order, n = np_order(prob, pending), 0
    for j, i in enumerate(order):
        if j > 0 and prob[i] < 1 - factor / (j + 2):
            break
        n += 1
    out = np.zeros_like(pending)
    out[order[:n]] = True
    return out


def np_entropy_budget(conf, entropy, pending, gamma):
    order, n = np_order(conf, pending), 0
    for j in range(len(order)):
        h = entropy[order[: j + 1]].astype(np.float64)
        if j > 0 and h.sum() - h.max() > gamma:
            break
        n += 1
    out = np.zeros_like(pending)
    out[order[:n]] = True
    return out


def test_parallel_rules_match_numpy_references_on_random_confidences():
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.3, 1.0, (16, 24)).astype(np.float32)
    entropy = rng.uniform(0.0, 1.5, (16, 24)).astype(np.float32)
    pending = rng.uniform(size=(16, 24)) < 0.7
    pending[3] = False  # a row with nothing left commits nothing
    checks = 0
    for tau in (0.5, 0.9, 1.0):
        got = np.asarray(threshold_rule(jnp.asarray(prob), jnp.asarray(pending), tau))
        want = np.stack([np_threshold(p, m, tau) for p, m in zip(prob, pending, strict=True)])
        np.testing.assert_array_equal(got, want, err_msg=f"threshold {tau}")
        checks += want.sum()
    assert np.asarray(threshold_rule(jnp.asarray(prob), jnp.asarray(pending), 1.0)).sum(1).tolist() == [
        int(m.any()) for m in pending]  # tau = 1: one per row with anything pending
    for factor in (0.5, 1.0, 3.0):
        got = np.asarray(factor_rule(jnp.asarray(prob), jnp.asarray(pending), factor))
        want = np.stack([np_factor(p, m, factor) for p, m in zip(prob, pending, strict=True)])
        np.testing.assert_array_equal(got, want, err_msg=f"factor {factor}")
        checks += want.sum()
    for gamma in (0.0, 0.7, 3.0):
        got = np.asarray(entropy_budget_rule(jnp.asarray(prob), jnp.asarray(entropy), jnp.asarray(pending), gamma))
        want = np.stack([np_entropy_budget(p, e, m, gamma) for p, e, m in zip(prob, entropy, pending, strict=True)])
        np.testing.assert_array_equal(got, want, err_msg=f"entropy_budget {gamma}")
        counts = want.sum(1)
        assert counts.max() > 1 or gamma == 0
    assert checks > 0


def test_rows_attention_pallas_matches_xla_on_a_window_of_rows():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (1, 5, 2, 8))  # 5 query rows, GQA: 2 query heads on 1 K/V head
    k, v = (jax.random.normal(key, (1, 13, 1, 8)) for key in keys[1:])
    q_valid = jnp.array([[False, True, True, True, True]])  # a pad row
    kv_valid = (jnp.arange(13) >= 1) & (jnp.arange(13) < 10)  # a pad key, a suffix window
    xla = rows_attention(q, k, v, q_valid, kv_valid[None], impl="xla")
    pallas = jax.jit(lambda *a: rows_attention(*a, impl="pallas"))(q, k, v, q_valid, kv_valid[None])
    np.testing.assert_allclose(np.asarray(pallas)[0, 1:], np.asarray(xla)[0, 1:], atol=2e-5)
    assert not np.asarray(pallas)[0, 0].any()  # the pad row is 0
    scores = jnp.einsum("qhd,khd->hqk", q[0], jnp.repeat(k[0], 2, axis=1)) / jnp.sqrt(8.0)
    weights = jax.nn.softmax(jnp.where(kv_valid[None, None], scores, -jnp.inf), axis=-1)
    direct = jnp.einsum("hqk,khd->qhd", weights, jnp.repeat(v[0], 2, axis=1))
    np.testing.assert_allclose(np.asarray(xla[0, 1:]), np.asarray(direct[1:]), atol=2e-5)


@pytest.mark.slow
def test_dual_cache_refreshed_every_step_is_the_exact_sampler_shifted_model():
    """Dream-style (shifted) model, left padding, GQA, sampling at temperature 0.7: one block decoded with the
    dual cache refreshed every step gives the exact (no-block) sampler's tokens, step by step."""
    model = tiny(True)
    knobs = dict(max_new_tokens=8, steps=8, alg="maskgit_plus", temperature=0.7)
    exact = run(model, **knobs)
    dual = run(model, **knobs, block_length=8, cache="dual", cache_refresh="step")
    assert_same(dual, exact)
    assert np.asarray(exact.forward_equivalents).tolist() == [8.0, 8.0]
    # every step a refresh (one full forward), whose own logits serve the step
    np.testing.assert_allclose(np.asarray(dual.forward_equivalents), [8.0, 8.0], rtol=1e-5)
    assert np.asarray(dual.tokens_per_step).tolist() == [1.0, 1.0]


def test_dual_cache_refreshed_every_step_is_llada_exact_sampler_with_cfg():
    """LLaDA-style (unshifted) model, left padding, GQA, CFG: two blocks, dual cache refreshed every step, equal
    the exact LLaDA sampler (whose outputs match LLaDA's reference in test_sampling_parity)."""
    model = tiny(False)
    knobs = dict(max_new_tokens=8, steps=4, alg="low_confidence", block_length=4, cfg_scale=0.5)
    exact = run(model, **knobs)
    dual = run(model, **knobs, cache="dual", cache_refresh="step")
    assert_same(dual, exact)
    assert np.asarray(dual.nfe).tolist() == [8, 8]  # two branches per step


def test_threshold_one_commits_one_token_per_step_with_dual_cache_and_early_exit():
    config, params = model = tiny(True)
    frames = []
    out = run(model, max_new_tokens=12, alg="maskgit_plus", block_length=4, threshold=1.0, cache="dual",
              early_exit=True, forbid_mask_token=True,
              step_callback=lambda step, x: frames.append((int(step), np.asarray(x))))
    history, seq, nfe = np.asarray(out.history), np.asarray(out.sequences), np.asarray(out.nfe)
    steps = len(frames)
    assert [s for s, _ in frames] == list(range(steps))  # the callback saw every step, in order, as it ran
    for step, frame in frames:
        np.testing.assert_array_equal(frame, history[step])
    canvas = np.concatenate([np.asarray(IDS), np.full((2, 12), MASK)], axis=1)
    exited = 0
    for row in range(2):
        before = canvas[row]
        for step in range(int(nfe[row])):
            after = history[step, row]
            new = np.flatnonzero((before == MASK) & (after != MASK))
            block = (new[0] - 5) // 4
            end = 5 + 4 * (block + 1)
            if len(new) > 1:  # early exit: the step's one token finished a block holding an EOS; the rest is EOS
                exited += 1
                assert EOS in after[5:end] and (after[end:] == EOS).all() and (before[5:end] == MASK).sum() == 1
                assert step == nfe[row] - 1
            else:
                assert len(new) == 1, (row, step)  # threshold 1.0: exactly one token per step
            before = after
        np.testing.assert_array_equal(before, seq[row])
    assert exited == 1 and (seq != MASK).all()
    # cost: a block's first step is its refresh (one full forward), each later step a window of block + 1 rows
    blocks = [len({(int(np.flatnonzero(history[s, r] != (canvas[r] if s == 0 else history[s - 1, r]))[0]) - 5)
                   // 4 for s in range(int(nfe[r]))}) for r in range(2)]
    window = forward_cost(config, 5, 17, 17)
    np.testing.assert_allclose(np.asarray(out.forward_equivalents), np.array(blocks) + (nfe - blocks) * window,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.tokens_per_step), 12 / nfe, rtol=1e-6)


def test_entropy_budget_with_a_suffix_window_prefix_cache_matches_no_cache():
    model = tiny(False)
    knobs = dict(max_new_tokens=12, alg="entropy", block_length=4, entropy_budget=6.0, suffix_window=2)
    none = run(model, **knobs)
    prefix = run(model, **knobs, cache="prefix", cache_refresh="step")
    assert_same(prefix, none)
    nfe = np.asarray(none.nfe)
    assert (np.asarray(none.sequences) != MASK).all() and (nfe < 12).all() and (nfe >= 3).all()


@pytest.mark.parametrize("knobs, match", [
    (dict(threshold=0.9, factor=1.0), "at most one parallel decoding rule"),
    (dict(threshold=1.5), r"threshold=1.5 must be in \(0, 1\]"),
    (dict(cache="full"), "cache='full' is not one of"),
    (dict(alg="diffullama", steps=4, cache="dual"), "not available for alg='diffullama'"),
    (dict(block_length=3, threshold=0.9), "block_length=3 must divide max_new_tokens=8"),
])
def test_bad_knobs_are_refused_in_one_line(knobs, match):
    with pytest.raises(ValueError, match=match):
        GenerateConfig(**{"max_new_tokens": 8, "alg": "entropy", **knobs})


def test_model_settings_that_block_wise_decoding_needs_are_checked_before_compiling():
    config, params = tiny(True)
    gen = GenerateConfig(max_new_tokens=8, alg="entropy", block_length=4, early_exit=True)
    with pytest.raises(ValueError, match="early_exit needs the model config's eos_token_id"):
        generate(params, config.replace(eos_token_id=None), IDS, PAD, gen, jax.random.key(0))
    with pytest.raises(ValueError, match="cache='dual' needs a bidirectional model"):
        causal = config.replace(attention_mode="causal")
        generate(params, causal, IDS, PAD, gen.replace(cache="dual"), jax.random.key(0))
