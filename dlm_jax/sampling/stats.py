"""Logit filters (forbidden ids; Dream's top-p/top-k live with `token_stats`) and `position_stats`, the one
per-position reduction."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm_jax.ops.token_stats import TokenStats, token_stats
from dlm_jax.sampling.config import GenerateConfig


def forbid_ids(logits: jax.Array, gen: GenerateConfig, mask_token_id: int) -> jax.Array:
    """-inf at ids the config rules out: `suppress_tokens`, the mask id, ids >= `vocab_limit`."""
    banned = set(gen.suppress_tokens)
    if gen.forbid_mask_token:
        banned.add(mask_token_id)
    vocab = logits.shape[-1]
    if not banned and (gen.vocab_limit is None or gen.vocab_limit >= vocab):
        return logits
    ids = jnp.arange(vocab)
    drop = jnp.isin(ids, jnp.array(sorted(banned), jnp.int32)) if banned else jnp.zeros((vocab,), bool)
    if gen.vocab_limit is not None:
        drop = drop | (ids >= gen.vocab_limit)
    return jnp.where(drop, -jnp.inf, logits)


def position_stats(
    logits: jax.Array, gen: GenerateConfig, key: jax.Array, *, impl: str = "xla", rows: jax.Array | None = None
) -> TokenStats:
    """Token and confidences for every position: THE per-position vocabulary reduction of the sampler.

    Dream's `sample_tokens` order: logits / temperature (T > 0 only), top-p, top-k, softmax; token is
    the argmax (T = 0) or a Gumbel-max sample from `key`; `prob` is its probability, `margin` the
    top1 - top2 gap, `neg_entropy` sum p log(p + 1e-10). The work goes to `dlm_jax.ops.token_stats`
    with `impl` ("xla" reference or the fused Pallas kernel, which never materialises the [B, L, V]
    probabilities and applies top-p/top-k as a per-row cutoff). `rows` numbers the rows for the sampling noise
    (`token_stats`), so a gathered subset draws what the full set would. LLaDA (`low_confidence`/
    `random`) samples at T but scores with the untempered softmax, so `prob` is recomputed from the
    raw logits there.

    Example:
        >>> gen = GenerateConfig(max_new_tokens=4, steps=4, alg="entropy")
        >>> s = position_stats(jnp.log(jnp.array([[[0.7, 0.2, 0.1]]])), gen, jax.random.key(0))
        >>> int(s.token[0, 0]), round(float(s.prob[0, 0]), 3)
        (0, 0.7)
    """
    if gen.logits_temp != 1.0:
        logits = logits / jnp.float32(gen.logits_temp)
    sample_key = key if gen.temperature > 0 else None
    entropy = gen.alg == "entropy" or gen.entropy_budget is not None  # its readers (the kernel then sweeps twice)
    top_p = gen.top_p if gen.top_p is not None and gen.top_p < 1 else None
    if top_p is not None or gen.top_k is not None:  # Dream divides before filtering (not by 1/T): keep its numbers
        z = logits / jnp.float32(gen.temperature) if gen.temperature > 0 else logits
        stats = token_stats(
            z, key=sample_key, with_entropy=entropy, rows=rows, top_p=top_p, top_k=gen.top_k, impl=impl
        )
    else:
        temperature = gen.temperature or None
        stats = token_stats(logits, temperature=temperature, key=sample_key, with_entropy=entropy, rows=rows, impl=impl)
    if gen.transfer_mode == "llada" and gen.temperature > 0:
        picked = jnp.take_along_axis(logits, stats.token[..., None], axis=-1)[..., 0]
        prob = jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))
        stats = stats._replace(prob=prob)
    return stats
