"""What the token-statistics reference and its Pallas kernel share: the result type and counter-based noise.

Both `dlm_jax.ops.token_stats` (the XLA reference and the dispatch) and
`dlm_jax.ops.pallas.token_stats` (the fused kernel) import from here, so neither imports the other
at module level.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ENTROPY_EPS = 1e-10  # Dream: torch.log(probs + 1e-10)


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
