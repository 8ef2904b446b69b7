"""The absorbing-state forward process: diffusion times, the one masking function, attention annealing."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_times(rng: jax.Array, batch: int, method: str = "uniform") -> jax.Array:
    """Diffusion times t in [0, 1), one per sequence.

    `uniform`: i.i.d. U(0,1). `antithetic` (md4's low-discrepancy sampler): one shared offset
    u, t_b = (u + b / B) mod 1. `stratified`: t_b = (b + u_b) / B, one draw in each of B strata.

    Example:
        >>> sample_times(jax.random.key(0), 4, "antithetic").shape
        (4,)
    """
    if method == "uniform":
        return jax.random.uniform(rng, (batch,))
    if method == "antithetic":
        u = jax.random.uniform(rng, ())
        return jnp.mod(u + jnp.arange(batch) / batch, 1.0)
    if method == "stratified":
        return (jnp.arange(batch) + jax.random.uniform(rng, (batch,))) / batch
    raise ValueError(f"time_sampling={method!r} is not one of ('uniform', 'antithetic', 'stratified')")


def mask_probability(t: jax.Array, eps: float) -> jax.Array:
    """SMDM/LLaDA's masking rate p = (1 - eps) t + eps (so p never reaches 0)."""
    return (1.0 - eps) * t + eps


def mask_tokens(
    rng: jax.Array, input_ids: jax.Array, p_mask: jax.Array, mask_id: int, maskable: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Replace each maskable token by `mask_id` independently with probability `p_mask` (per sequence).

    Returns `(noisy_ids, masked)` with `masked` True where a token was replaced. Every objective
    in this package noises its input through this one function.

    Example:
        >>> ids = jnp.arange(6).reshape(1, 6)
        >>> noisy, masked = mask_tokens(jax.random.key(0), ids, jnp.array([1.0]), 99)
        >>> bool(masked.all()), int(noisy[0, 0])
        (True, 99)
    """
    u = jax.random.uniform(rng, input_ids.shape)
    masked = u < p_mask.reshape(-1, 1)
    if maskable is not None:
        masked = masked & maskable.astype(bool)
    return jnp.where(masked, mask_id, input_ids), masked


def anneal_ratio(step: jax.Array, anneal_steps: int) -> jax.Array:
    """DiffuLLaMA's share of non-causal links: min(1, (step + 1) / anneal_steps); 1 when annealing is off."""
    if anneal_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / anneal_steps)


def anneal_attention_bias(rng: jax.Array, step: jax.Array, seq_len: int, anneal_steps: int) -> jax.Array:
    """Boolean [1, 1, L, L] mask (True = attend): causal OR Bernoulli(ratio), one draw shared by batch/heads/layers.

    Example:
        >>> bias = anneal_attention_bias(jax.random.key(0), jnp.array(0), 4, 1)
        >>> bool(bias.all())
        True
    """
    ratio = anneal_ratio(step, anneal_steps)
    causal = jnp.tril(jnp.ones((seq_len, seq_len), bool))
    random_links = jax.random.uniform(rng, (seq_len, seq_len)) < ratio
    return (causal | random_links)[None, None]
