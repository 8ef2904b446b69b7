"""What the token-statistics reference and its Pallas kernel share: result type, counter noise, filter cutoffs.

Both `dlm_jax.ops.token_stats` (the XLA reference and the dispatch) and
`dlm_jax.ops.pallas.token_stats` (the fused kernel) import from here, so neither imports the other
at module level.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ENTROPY_EPS = 1e-10  # Dream: torch.log(probs + 1e-10)
FILL = float(jnp.finfo(jnp.float32).min)  # Dream's fill value for logits removed by top-p/top-k


class TokenStats(NamedTuple):
    """Per-position results, each [B, L] (or the leading shape of the logits).

    token: argmax (or Gumbel-max sampled) token id, int32.
    prob: softmax probability of `token` (Dream's default confidence).
    margin: top-1 minus top-2 softmax probability (Dream's `topk_margin`).
    neg_entropy: sum_v p_v * log(p_v + 1e-10) (Dream's `entropy` confidence; <= 0).
    """

    token: jax.Array
    prob: jax.Array
    margin: jax.Array
    neg_entropy: jax.Array


def inverse_temperature(temperature: float | jax.Array | None) -> jax.Array:
    """1/T as a float32 scalar, or 1 when `temperature` is None or 0 (Dream divides only when T > 0)."""
    if temperature is None:
        return jnp.float32(1.0)
    t = jnp.asarray(temperature, jnp.float32)
    return jnp.where(t > 0, 1.0 / jnp.where(t > 0, t, 1.0), 1.0)


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser (lowbias32, Wellons): full avalanche, uint32 ops only."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def gumbel_from_counters(seed: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
    """Gumbel(0, 1) noise for integer coordinates (row, col) under a 2-word uint32 `seed`.

    Pure elementwise uint32 arithmetic, so a kernel can regenerate any block of it. `row`, `col`
    broadcast against each other. Uniforms use the top 24 bits, strictly inside (0, 1).
    """
    h = _mix32(row.astype(jnp.uint32) ^ seed[0])
    h = _mix32(h ^ (col.astype(jnp.uint32) * jnp.uint32(0x9E3779B9)) ^ seed[1])
    h = _mix32(h + seed[1])
    u = ((h >> 8).astype(jnp.int32).astype(jnp.float32) + 0.5) * jnp.float32(1.0 / (1 << 24))
    return -jnp.log(-jnp.log(u))


def key_to_seed(key: jax.Array) -> jax.Array:
    """Two uint32 words from a `jax.random` key (typed or raw)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def uses_top_p(top_p: float | None) -> bool:
    """Dream filters by top-p only when it is set below 1."""
    return top_p is not None and top_p < 1


def check_top_k(top_k: int | None) -> None:
    """`top_k` is None (off) or a positive int."""
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def filter_cutoff(z: jax.Array, top_p: float | None, top_k: int | None) -> tuple[jax.Array, jax.Array]:
    """Per-row cutoff of Dream's top-p-then-top-k filters on z [N, V], as (value [N] float32, column [N] int32).

    A logit survives both filters iff `z > value` or (`z == value` and its column <= `column`), i.e.
    (z, -column) >= (value, -column) lexicographically; every other logit becomes `FILL`. Top-p keeps a
    prefix of the stably sorted row (ties kept in column order, so it may cut a run of equal logits),
    found exactly as Dream's `top_p_logits` does it (argsort, softmax, cumsum); top-k keeps every logit
    >= the k-th largest (ties survive: column = V). Both filters keep lexicographic prefixes, so their
    composition keeps the shorter one; the k-th largest of the top-p-filtered row can be taken from
    the raw row because it only matters when top-p keeps >= k logits. Only [N] numbers come out: a
    kernel applies the cutoff per vocabulary block without a filtered [N, V] copy.

    Example:
        >>> v, c = filter_cutoff(jnp.array([[1.0, 3.0, 3.0, 2.0]]), None, 2)
        >>> v.tolist(), c.tolist()
        ([3.0], [4])
    """
    check_top_k(top_k)
    n, vocab = z.shape
    value = jnp.full((n,), -jnp.inf, jnp.float32)
    column = jnp.full((n,), vocab, jnp.int32)
    if uses_top_p(top_p):
        order = jnp.argsort(-z, axis=-1, stable=True)
        sorted_z = jnp.take_along_axis(z, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_z, axis=-1), axis=-1)
        last = jnp.sum(cumulative[:, :-1] <= top_p, axis=-1)[:, None]  # sorted position of the last kept logit
        value = jnp.take_along_axis(sorted_z, last, axis=-1)[:, 0].astype(jnp.float32)
        column = jnp.take_along_axis(order, last, axis=-1)[:, 0].astype(jnp.int32)
    if top_k is not None:
        kth = jax.lax.top_k(z, min(top_k, vocab))[0][:, -1].astype(jnp.float32)
        tighter = kth > value
        value = jnp.where(tighter, kth, value)
        column = jnp.where(tighter, vocab, column)
    return value, column


def apply_cutoff(z: jax.Array, value: jax.Array, column: jax.Array, cols: jax.Array) -> jax.Array:
    """`z` [rows, cols] with the logits below the (value, column) cutoff [rows, 1] set to `FILL`."""
    keep = (z > value) | ((z == value) & (cols <= column))
    return jnp.where(keep, z, FILL)
