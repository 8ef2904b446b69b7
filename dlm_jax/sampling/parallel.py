"""Parallel decoding rules: how many of a block's masked positions one step commits, per row, in static shapes.

Each rule takes per-position scores of the block [B, n] and `pending` [B, n] (the masked positions that
may be committed) and returns the boolean [B, n] subset committed now. Every row with a pending position
commits at least its most confident one, so a block always finishes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm_jax.sampling.algorithms import top_count


def _leading_count(ok_sorted: jax.Array, pending: jax.Array) -> jax.Array:
    """[B] int32: how many leading entries of each row of `ok_sorted` hold, at least 1 where `pending` has any."""
    lead = jnp.sum(jnp.cumprod(ok_sorted.astype(jnp.int32), axis=-1), axis=-1)
    return jnp.where(jnp.any(pending, axis=-1), jnp.maximum(lead, 1), 0).astype(jnp.int32)


def _sorted_desc(pending: jax.Array, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The order of each row's pending scores, best first (ties: lower index), and the sorted pending flags."""
    order = jnp.argsort(-jnp.where(pending, scores, -jnp.inf), axis=-1, stable=True)
    return order, jnp.take_along_axis(pending, order, axis=-1)


def threshold_rule(prob: jax.Array, pending: jax.Array, tau: float) -> jax.Array:
    """Fast-dLLM: every pending position with `prob >= tau`, and the most probable one of each row.

    Example:
        >>> threshold_rule(jnp.array([[0.5, 0.95, 0.92, 0.3]]), jnp.array([[True, True, True, False]]), 0.9).tolist()
        [[False, True, True, False]]
        >>> threshold_rule(jnp.array([[0.5, 0.7]]), jnp.array([[True, True]]), 0.9).tolist()
        [[False, True]]
    """
    best = top_count(jnp.where(pending, prob, -jnp.inf), jnp.any(pending, axis=-1).astype(jnp.int32))
    return pending & ((prob >= jnp.float32(tau)) | best)


def factor_rule(prob: jax.Array, pending: jax.Array, factor: float) -> jax.Array:
    """Fast-dLLM's factor rule: the `n` most probable pending positions, the largest `n` such that the `k`-th
    of them has `prob >= 1 - factor / (k + 1)` for every `k <= n` (the first always passes).

    (Fast-dLLM's loop also commits every position when only its last one fails; here it stays masked.)

    Example:
        >>> p = jnp.array([[0.99, 0.2, 0.6, 0.5]])  # thresholds 1 - 1/(k+1): any, 0.667, 0.75, 0.8
        >>> factor_rule(p, jnp.ones((1, 4), bool), 1.0).tolist()
        [[True, False, False, False]]
        >>> factor_rule(p, jnp.ones((1, 4), bool), 2.0).tolist()  # 1 - 2/(k+1): any, 0.333, 0.5, 0.6
        [[True, False, True, True]]
    """
    order, pending_sorted = _sorted_desc(pending, prob)
    ranks = jnp.arange(1, prob.shape[-1] + 1, dtype=jnp.float32)
    ok = pending_sorted & (jnp.take_along_axis(prob, order, axis=-1) >= 1 - jnp.float32(factor) / (ranks + 1))
    ok = ok.at[:, 0].set(True)
    return pending & top_count(jnp.where(pending, prob, -jnp.inf), _leading_count(ok, pending))


def entropy_budget_rule(confidence: jax.Array, entropy: jax.Array, pending: jax.Array, gamma: float) -> jax.Array:
    """EB-Sampler: pending positions in `confidence` order, the longest prefix whose summed `entropy` minus its
    largest entropy stays <= `gamma` (so at least one; `gamma=0` commits one per step).

    Example:
        >>> conf = jnp.array([[0.9, 0.8, 0.7, 0.1]])
        >>> ent = jnp.array([[0.1, 0.2, 0.3, 2.0]])
        >>> entropy_budget_rule(conf, ent, jnp.ones((1, 4), bool), 0.35).tolist()  # 0, 0.1, 0.3, 0.6 -> 3
        [[True, True, True, False]]
    """
    order, pending_sorted = _sorted_desc(pending, confidence)
    h = jnp.where(pending_sorted, jnp.take_along_axis(entropy, order, axis=-1), 0.0)
    spent = jnp.cumsum(h, axis=-1) - jax.lax.cummax(h, axis=h.ndim - 1)
    ok = pending_sorted & (spent <= jnp.float32(gamma))
    return pending & top_count(jnp.where(pending, confidence, -jnp.inf), _leading_count(ok, pending))
