"""token_stats: XLA reference vs Dream's PyTorch `sample_tokens`, and the Pallas kernel vs the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dlm_jax.ops.pallas.token_stats import pallas_token_stats
from dlm_jax.ops.stats_common import FILL, filter_cutoff
from dlm_jax.ops.token_stats import gumbel_noise, token_stats, top_k_filter, top_p_filter, top_two, xla_token_stats

REL = 1e-5  # confidences, float32, relative (the bar)


def _dream_stats(logits: np.ndarray, temperature: float):
    """Dream's generation_utils.sample_tokens (greedy branch) for all three confidences."""
    x = torch.tensor(logits, dtype=torch.float32)
    if temperature > 0:
        x = x / temperature
    probs = torch.softmax(x, dim=-1)
    conf, tok = probs.max(dim=-1)
    top = torch.sort(probs, dim=-1, descending=True)[0]
    neg_ent = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return tok.numpy(), conf.numpy(), (top[..., 0] - top[..., 1]).numpy(), neg_ent.numpy()


def _logits(seed, shape, scale=4.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * scale
    x[0, 0, 3] = x[0, 0, 250] = x[0, 0].max() + 1.0  # a tie across vocab blocks: first index wins
    return x


def _close(a, b, rel=REL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.abs(a - b) <= rel * np.abs(b) + 1e-7), np.max(np.abs(a - b))


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_reference_matches_dream_sample_tokens(temperature):
    x = _logits(0, (2, 5, 300))
    s = xla_token_stats(jnp.asarray(x), temperature=temperature)
    tok, conf, margin, neg_ent = _dream_stats(x, temperature)
    np.testing.assert_array_equal(np.asarray(s.token), tok)
    assert int(s.token[0, 0]) == 3 and float(s.margin[0, 0]) == 0.0
    _close(s.prob, conf)
    _close(s.margin, margin)
    _close(s.neg_entropy, neg_ent)


def test_top_two_equals_torch_topk_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, size=(64, 9)).astype(np.float32)  # small integers: many tied maxima
    x[0] = 5.0  # every entry tied
    x[1, :] = 0.0
    x[1, 8] = 1.0  # the maximum in the last column
    top, index, second = top_two(jnp.asarray(x))
    values, _ = torch.topk(torch.tensor(x), 2, dim=-1)
    np.testing.assert_array_equal(np.asarray(top), values[:, 0].numpy())
    np.testing.assert_array_equal(np.asarray(second), values[:, 1].numpy())
    np.testing.assert_array_equal(np.asarray(index), np.argmax(x, axis=-1))  # first index of the maximum
    assert float((values[:, 0] == values[:, 1]).float().mean()) > 0.2  # the case mix really has ties
    top1, index1, second1 = top_two(jnp.array([[0.7]]))  # one entry: second value 0, margin = the value
    assert top1.tolist() == [np.float32(0.7)] and index1.tolist() == [0] and second1.tolist() == [0.0]


@pytest.mark.parametrize(
    "dtype,temperature,sample",
    [(jnp.float32, None, False), (jnp.float32, 0.7, True), (jnp.bfloat16, 1.3, False)],
)
def test_pallas_matches_reference(dtype, temperature, sample):
    # 3*7 = 21 rows (ragged against 8-row blocks), 300 vocab (ragged against 128-wide blocks)
    x = jnp.asarray(_logits(1, (3, 7, 300)), dtype)
    key = jax.random.key(5) if sample else None
    got = pallas_token_stats(x, temperature=temperature, key=key, block_rows=8, block_vocab=128)
    want = xla_token_stats(x, temperature=temperature, key=key)
    np.testing.assert_array_equal(np.asarray(got.token), np.asarray(want.token))
    for name in ("prob", "margin", "neg_entropy"):
        g = getattr(got, name)
        assert g.shape == (3, 7) and g.dtype == jnp.float32 and bool(jnp.isfinite(g).all())
        _close(g, getattr(want, name))


def test_dispatch_and_single_sweep():
    x = jnp.asarray(_logits(2, (2, 4, 260)))
    full = token_stats(x, temperature=0.5, impl="pallas")
    fast = token_stats(x, temperature=0.5, impl="pallas", with_entropy=False)
    np.testing.assert_array_equal(np.asarray(fast.token), np.asarray(full.token))
    np.testing.assert_array_equal(np.asarray(fast.prob), np.asarray(full.prob))
    assert float(jnp.abs(fast.neg_entropy).max()) == 0.0
    assert float(jnp.abs(xla_token_stats(x, with_entropy=False).neg_entropy).max()) == 0.0
    with pytest.raises(ValueError, match="sampling_impl='triton' is not one of"):
        token_stats(x, impl="triton")
    with pytest.raises(ValueError, match="block_vocab must be a positive multiple of 128"):
        pallas_token_stats(x, block_vocab=100)


def test_gumbel_max_samples_from_softmax():
    """Counter-based Gumbel noise: sampled frequencies match softmax(logits / T)."""
    rows, temperature = 40000, 0.8
    logits = jnp.log(jnp.array([0.05, 0.4, 0.15, 0.3, 0.1]))
    x = jnp.broadcast_to(logits, (rows, 5))
    s = xla_token_stats(x, temperature=temperature, key=jax.random.key(11))
    freq = np.bincount(np.asarray(s.token), minlength=5) / rows
    p = np.asarray(jax.nn.softmax(logits / temperature))
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / rows)), (freq, p)
    _close(s.prob, p[np.asarray(s.token)])  # confidence = probability of the sampled token
    other = xla_token_stats(x, temperature=temperature, key=jax.random.key(12)).token
    assert float(jnp.mean(other == s.token)) < 0.5  # a different key gives different draws
    g = np.asarray(gumbel_noise(jax.random.key(0), 200, 500)).ravel()
    assert abs(g.mean() - 0.5772) < 0.02 and abs(g.var() - np.pi**2 / 6) < 0.1  # Gumbel(0,1) moments


def _tied_logits(seed):
    """21 rows x 300 vocab with runs of equal logits: integer-valued rows, a flat row, a row with one finite logit."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 7, 300)).astype(np.float32) * 3.0
    x[0, :4] = rng.integers(0, 4, size=(4, 300)).astype(np.float32)  # small integers: ties at every cutoff
    x[1, 0] = 1.5  # flat: top-p cuts a run of equal logits, by column order across vocab blocks
    x[1, 1] = -np.inf
    x[1, 1, 200] = 0.0  # one finite logit (as with forbidden ids): the margin is the whole probability
    return x


def test_pallas_top_p_top_k_cutoff_matches_dream_filters():
    """The kernel's per-row cutoff gives the tokens and confidences of Dream's filtered softmax, ties included."""
    x = jnp.asarray(_tied_logits(7))
    key = jax.random.key(3)
    for top_p, top_k, temperature, sample in ((None, 50, None, False), (0.8, 5, 1.3, True)):
        kw = dict(temperature=temperature, key=key if sample else None, top_p=top_p, top_k=top_k)
        got = pallas_token_stats(x, block_rows=24, block_vocab=256, **kw)  # one row block, two vocab blocks
        want = xla_token_stats(x, **kw)
        np.testing.assert_array_equal(np.asarray(got.token), np.asarray(want.token))
        for name in ("prob", "margin", "neg_entropy"):
            _close(getattr(got, name), getattr(want, name))
        unfiltered = xla_token_stats(x, temperature=temperature, key=kw["key"])
        assert float(jnp.mean(want.neg_entropy > unfiltered.neg_entropy + 1e-3)) > 0.5  # the filters really act
    z = jnp.asarray(_tied_logits(7)).reshape(21, 300)
    value, column = filter_cutoff(z, 0.5, None)
    kept = np.asarray(top_p_filter(z, 0.5) > FILL)
    assert int(column[7]) == kept[7].sum() - 1 and float(value[7]) == 1.5  # the flat row: a prefix of the tied run
    assert 0 < kept[7].sum() < 300
    kth = filter_cutoff(z, None, 5)[0][:, None]  # top-k alone: every logit >= the k-th largest, ties included
    np.testing.assert_array_equal(np.asarray(top_k_filter(z, 5) == z), np.asarray(z >= kth))
