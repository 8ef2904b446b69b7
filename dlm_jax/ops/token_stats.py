"""Per-position sampling statistics (token, probability, margin, negative entropy) with one dispatch.

`token_stats` is what a diffusion sampler needs at every step for every position: the chosen
token and Dream's three confidences. The XLA reference here follows Dream's `sample_tokens`
(`generation_utils.py`) line for line, top-p/top-k filters included; the Pallas kernel
(`dlm_jax.ops.pallas.token_stats`) computes the same numbers in vocabulary blocks without writing a
[B, L, V] probability tensor, and applies the filters as a per-row cutoff (`filter_cutoff`).

Sampling (temperature > 0) is Gumbel-max with counter-based noise (`gumbel_noise`): the noise of
element (row, v) is a pure function of (key, row, v), so the kernel regenerates it per vocab block
and both implementations pick the same token from the same key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dlm_jax.ops.stats_common import (
    ENTROPY_EPS,
    FILL,
    TokenStats,
    check_top_k,
    gumbel_from_counters,
    inverse_temperature,
    key_to_seed,
    uses_top_p,
)

IMPLEMENTATIONS = ("xla", "pallas", "auto")


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Dream's `top_p_logits`: drop tokens once the sorted cumulative probability exceeds `top_p`.

    The first token over the threshold is kept (the mask is shifted one place right), dropped
    logits become float32's most negative finite value.

    Example:
        >>> top_p_filter(jnp.log(jnp.array([0.5, 0.3, 0.2])), 0.6)[1] > FILL
        Array(True, dtype=bool)
    """
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove = cumulative > top_p
    remove = jnp.concatenate([jnp.zeros_like(remove[..., :1]), remove[..., :-1]], axis=-1)
    remove = jnp.take_along_axis(remove, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(remove, FILL, logits)


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    """Dream's `top_k_logits`: drop logits below the k-th largest (ties with it survive)."""
    k = min(top_k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, FILL, logits)


def gumbel_noise(key: jax.Array, rows: int, vocab: int) -> jax.Array:
    """The [rows, vocab] Gumbel noise `token_stats(..., key=key)` adds to logits/T (reference only)."""
    seed = key_to_seed(key)
    r = jnp.arange(rows, dtype=jnp.uint32)[:, None]
    c = jnp.arange(vocab, dtype=jnp.uint32)[None, :]
    return gumbel_from_counters(seed, r, c)


def first_argmax(values: jax.Array) -> jax.Array:
    """Index of the first maximum along the last axis (`jnp.argmax` without NaNs), by two plain reductions.

    XLA:CPU lowers `jnp.argmax` to a slow variadic reduction; max, then the smallest column holding
    it, is several times faster. A row with no maximum (all NaN) gives 0, as `jnp.argmax` would.
    """
    cols = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
    best = jnp.max(values, axis=-1, keepdims=True)
    index = jnp.min(jnp.where(values == best, cols, values.shape[-1]), axis=-1)
    return jnp.where(index == values.shape[-1], 0, index)


def top_two(values: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(largest value, its first index, second-largest value) along the last axis, as `torch.topk(values, 2)`.

    Two max reductions instead of a top-k (a sort on XLA:CPU): the second value is the max with the
    first argmax position excluded, so a maximum that occurs twice is also the second value (a zero
    margin). With a single entry the second value is 0 (Dream's margin is then the value itself).

    Example:
        >>> [v.tolist() for v in top_two(jnp.array([[1.0, 3.0, 3.0], [4.0, 2.0, 1.0]]))]
        [[3.0, 4.0], [1, 0], [3.0, 2.0]]
    """
    top = jnp.max(values, axis=-1)
    index = first_argmax(values)
    if values.shape[-1] == 1:
        return top, index, jnp.zeros_like(top)
    cols = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
    second = jnp.max(jnp.where(cols == index[..., None], -jnp.inf, values), axis=-1)
    return top, index, second


def xla_token_stats(
    logits: jax.Array,
    *,
    temperature: float | jax.Array | None = None,
    key: jax.Array | None = None,
    with_entropy: bool = True,
    rows: jax.Array | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
) -> TokenStats:
    """Reference: Dream's `sample_tokens` in float32.

    Greedy (`key=None`): token = argmax, prob = max prob. With `key`: token ~ softmax(logits/T)
    by Gumbel-max on `gumbel_noise(key, ...)`, prob = probability of the sampled token.
    `top_p` (applied when < 1), then `top_k`, set the logits/T they drop to `FILL` first (Dream's order);
    margin and negative entropy are over the softmax of what is left, as in Dream.
    `rows` (int, the leading shape of `logits`) numbers the rows for the noise; default: 0, 1, 2, ...
    in row-major order. Gathered rows keep their draws when they pass their original numbers.

    Example:
        >>> s = xla_token_stats(jnp.array([[[2.0, 1.0, 0.0]]]))
        >>> int(s.token[0, 0]), round(float(s.prob[0, 0]), 4)
        (0, 0.6652)
    """
    check_top_k(top_k)
    lead = logits.shape[:-1]
    vocab = logits.shape[-1]
    z = logits.astype(jnp.float32) * inverse_temperature(temperature)
    if uses_top_p(top_p):
        z = top_p_filter(z, top_p)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    probs = jax.nn.softmax(z, axis=-1)
    top, index, second = top_two(probs)
    margin = top - second
    if with_entropy:
        neg_entropy = jnp.sum(probs * jnp.log(probs + ENTROPY_EPS), axis=-1)
    else:
        neg_entropy = jnp.zeros(lead, jnp.float32)
    if key is None:
        token, prob = index, top
    else:
        if rows is None:
            rows = jnp.arange(math.prod(lead), dtype=jnp.uint32).reshape(lead)
        cols = jnp.arange(vocab, dtype=jnp.uint32)
        g = gumbel_from_counters(key_to_seed(key), jnp.asarray(rows)[..., None], cols)
        token = first_argmax(z + g)
        prob = jnp.take_along_axis(probs, token[..., None], axis=-1)[..., 0]
    return TokenStats(token.astype(jnp.int32), prob, margin, neg_entropy)


def resolve_sampling_impl(impl: str) -> str:
    """Map `sampling_impl` to a concrete implementation for the default backend.

    "auto" -> "pallas" on TPU, "xla" elsewhere (on GPU the XLA reductions are already fused well;
    our kernel is written for Mosaic TPU). "pallas" on CPU runs the kernel in interpret mode
    (slow; meant for tests). "pallas" on GPU is refused here rather than failing in lowering.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"sampling_impl={impl!r} is not one of {IMPLEMENTATIONS}")
    backend = jax.default_backend()
    if impl == "auto":
        return "pallas" if backend == "tpu" else "xla"
    if impl == "pallas" and backend not in ("tpu", "cpu"):
        raise ValueError(
            f"sampling_impl='pallas' targets TPU (Mosaic) or CPU interpret mode, not backend {backend!r}; "
            "use 'xla' or 'auto'"
        )
    return impl


def token_stats(
    logits: jax.Array,
    *,
    temperature: float | jax.Array | None = None,
    key: jax.Array | None = None,
    with_entropy: bool = True,
    rows: jax.Array | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    impl: str = "xla",
) -> TokenStats:
    """Token and Dream's confidences for every position of `logits` [..., V].

    `temperature` None or 0 leaves logits as they are (greedy); T > 0 divides them by T.
    `key` (a `jax.random` key) switches from argmax to Gumbel-max sampling from softmax(logits/T).
    `with_entropy=False` returns zeros for `neg_entropy` (the kernel then reads the logits once, not twice).
    `rows`: the rows' numbers for the sampling noise (see `xla_token_stats`).
    `top_p` (< 1), `top_k`: Dream's filters on logits/T before everything else (see `xla_token_stats`).
    `impl`: "xla" (reference), "pallas" (fused vocab-block kernel), "auto" (pallas on TPU).

    Example:
        >>> s = token_stats(jnp.zeros((2, 3, 5)))
        >>> s.token.shape, round(float(s.prob[0, 0]), 4)
        ((2, 3), 0.2)
    """
    impl = resolve_sampling_impl(impl)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have a non-empty vocabulary axis, got shape {logits.shape}")
    if impl == "pallas":
        from dlm_jax.ops.pallas.token_stats import pallas_token_stats

        compute = pallas_token_stats
    else:
        compute = xla_token_stats
    kw = dict(temperature=temperature, key=key, with_entropy=with_entropy, rows=rows, top_p=top_p, top_k=top_k)
    return compute(logits, **kw)
