"""Likelihood estimators against enumeration of all masks and hand-computed chain rules."""

import functools
import itertools
import math

import jax
import numpy as np
import pytest

from dlm_jax.evaluation.batching import pack_targets
from dlm_jax.evaluation.estimator import Estimator
from dlm_jax.evaluation.likelihood import chain_rule_log_probs, greedy_matches, mc_elbo_losses
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig

MASK = 15


@functools.cache
def tiny(shift: bool) -> tuple[ModelConfig, dict]:
    cfg = ModelConfig(
        family="dream" if shift else "smdm",
        vocab_size=16,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        logit_shift=shift,
        mask_token_id=MASK,
        qkv_bias=shift,
        max_position_embeddings=64,
    )
    params = jax.jit(decoder.init, static_argnums=1)(jax.random.key(1), cfg)
    # Sharpen the random model so predictions depend strongly on which tokens are masked.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    return cfg, params


_apply = jax.jit(decoder.apply, static_argnames="config")


def log_probs_np(cfg, params, seq, cond_mask=None, cfg_scale=0.0):
    """[L, V] log-probs predicting each position of the 1-row `seq` (shift applied) via decoder.apply."""
    def raw(s):
        logits = np.asarray(_apply(params, np.asarray([s], np.int32), config=cfg))[0].astype(np.float64)
        if cfg.logit_shift:
            logits = np.concatenate([logits[:1], logits[:-1]])
        return logits

    logits = raw(seq)
    if cfg_scale:
        un = raw([MASK if c else t for t, c in zip(seq, cond_mask, strict=True)])
        logits = un + (cfg_scale + 1) * (logits - un)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def exact_elbo(cfg, params, prompt, target, kind, eps=0.0, cfg_scale=0.0):
    """-ELBO by enumerating every non-empty subset of masked target tokens."""
    seq = list(prompt) + list(target)
    n = len(target)
    total = 0.0
    for k in range(1, n + 1):
        if kind == "elbo":
            poly = np.polynomial.Polynomial([0, 1]) ** (k - 1) * np.polynomial.Polynomial([1, -1]) ** (n - k)
            integral = poly.integ()
            weight = (integral(1.0) - integral(eps)) / (1 - eps)  # E_p[p^(k-1) (1-p)^(n-k)], p ~ U[eps, 1]
        else:
            weight = 1.0 / (k * math.comb(n, k))
        for subset in itertools.combinations(range(n), k):
            noisy = list(seq)
            for j in subset:
                noisy[len(prompt) + j] = MASK
            cond = [i < len(prompt) for i in range(len(seq))]
            lp = log_probs_np(cfg, params, noisy, cond, cfg_scale)
            total += weight * sum(-lp[len(prompt) + j, seq[len(prompt) + j]] for j in subset)
    return total


# Every sequence in this file has 6 tokens, so the reference forward pass compiles once per model.
CASES = [([1, 2, 3], [4, 5, 6]), ([7, 8], [9, 10, 11, 12])]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,shift,cfg_scale", [("elbo", True, 0.0), ("elbo_llada", False, 0.0), ("elbo", False, 0.5)]
)
def test_mc_elbo_converges_to_enumerated_elbo(kind, shift, cfg_scale):
    cfg, params = tiny(shift)
    eps = 1e-3 if kind == "elbo" else 0.0
    prompts, targets = [c[0] for c in CASES], [c[1] for c in CASES]
    batch = pack_targets(prompts, targets, max_length=64, shifted=shift)
    keys = jax.random.split(jax.random.key(3), len(prompts))
    losses = np.asarray(
        mc_elbo_losses(
            params, *batch, keys, config=cfg, mc_num=8192, mc_batch=128, kind=kind, eps=eps, cfg_scale=cfg_scale
        ),
        np.float64,
    )
    for r, (p, t) in enumerate(CASES):
        exact = exact_elbo(cfg, params, p, t, kind, eps=eps, cfg_scale=cfg_scale)
        est, se = losses[r].mean(), losses[r].std(ddof=1) / math.sqrt(losses.shape[1])
        # Stated tolerance: within 4 standard errors of the 64 independent rounds, and within 3% of the value.
        assert abs(est - exact) < 4 * se + 1e-6, (kind, r, est, exact, se)
        assert abs(est - exact) < 0.03 * exact, (kind, r, est, exact)


def test_chain_rule_matches_hand_computed_steps():
    for shift in (True, False):
        cfg, params = tiny(shift)
        prompts, targets = [[1, 2], [3, 4, 5, 6]], [[8, 9, 10, 11], [11, 12]]
        lp, greedy = chain_rule_log_probs(params, *pack_targets(prompts, targets, max_length=64), config=cfg)
        lp, greedy = np.asarray(lp), np.asarray(greedy)
        for r, (p, t) in enumerate(zip(prompts, targets, strict=True)):
            seq = p + t
            want, want_greedy = [], []
            for j in range(len(t)):
                noisy = p + t[:j] + [MASK] * (len(t) - j)
                row = log_probs_np(cfg, params, noisy)[len(p) + j]
                want.append(row[t[j]])
                want_greedy.append(int(np.argmax(row)) == t[j])
            np.testing.assert_allclose(lp[r, : len(t)], want, rtol=1e-4, atol=1e-4)
            assert (lp[r, len(t) :] == 0).all()
            assert list(greedy[r, : len(t)]) == want_greedy
            assert len(seq) == len(p) + len(t)
        # The same scores through the Estimator driver (sorted, batched, padded).
        scores = Estimator(kind="chain", batch_size=1).score(params, cfg, prompts, targets)
        np.testing.assert_allclose([s.loglik for s in scores], lp.sum(-1), rtol=1e-5, atol=1e-5)


def greedy_decode_np(cfg, params, prompt, n):
    """LLaDA's suffix greedy prediction: unmask the most confident position each step."""
    seq = list(prompt) + [MASK] * n
    pending = set(range(len(prompt), len(seq)))
    while pending:
        lp = log_probs_np(cfg, params, seq)
        best = max(pending, key=lambda i: lp[i].max())
        seq[best] = int(np.argmax(lp[best]))
        pending.remove(best)
    return seq[len(prompt) :]


def test_greedy_check_matches_hand_decoding():
    cfg, params = tiny(True)
    prompts = [[1, 2, 3], [4, 5, 6]]
    decoded = [greedy_decode_np(cfg, params, p, 3) for p in prompts]
    wrong = [decoded[0][:2] + [(decoded[0][2] + 1) % MASK], decoded[1]]
    batch = pack_targets(prompts + prompts, decoded + wrong, max_length=64, shifted=True)
    got = greedy_matches(params, *batch, config=cfg)
    assert list(np.asarray(got)) == [True, True, False, True]


def test_estimates_do_not_depend_on_batching():
    cfg, params = tiny(False)
    prompts, targets = [[1, 2, 3], [4], [5, 6]], [[7, 8], [9, 10, 11], [12]]
    est = dict(kind="elbo", mc_num=16, mc_batch_size=8, greedy_check=False, seed=5)
    one = Estimator(batch_size=1, **est).score(params, cfg, prompts, targets)
    three = Estimator(batch_size=3, **est).score(params, cfg, prompts, targets)
    np.testing.assert_allclose([s.loglik for s in one], [s.loglik for s in three], rtol=1e-4)
    assert all(s.num_tokens == len(t) for s, t in zip(one, targets, strict=True))


def test_bad_estimator_input_is_rejected():
    with pytest.raises(ValueError, match="mc_num=100 is not divisible by mc_batch_size=32"):
        Estimator(mc_num=100, mc_batch_size=32)
    with pytest.raises(ValueError, match="estimator kind='bogus'"):
        Estimator(kind="bogus")
    with pytest.raises(ValueError, match="longer than the context"):
        pack_targets([[1] * 10], [[2] * 10], max_length=16)
    with pytest.raises(ValueError, match="prompt is empty"):
        pack_targets([[]], [[2]], max_length=16, shifted=True)
    cfg, params = tiny(False)
    with pytest.raises(ValueError, match="mask_token_id is not set"):
        Estimator(kind="chain").score(params, cfg.replace(mask_token_id=None), [[1]], [[2]])
