"""The sampler's logits, and per-position statistics on only the rows a sampler step reads, in static row buckets.

Dream's loop reduces the vocabulary only at masked positions; a jitted loop has static shapes, so
the rows a step reads (a dynamic set) are packed first and rounded up to one of a few static
capacities (`row_buckets`), and `lax.switch` runs the head + statistics at that capacity. The
transformer trunk still runs on every position (attention is bidirectional). Every row keeps the
arithmetic it has in the full [B, L, V] computation, and sampling noise is numbered by the row's
original index, so the result does not depend on the bucket.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.ops.token_stats import TokenStats
from dlm_jax.sampling.config import GenerateConfig
from dlm_jax.sampling.stats import forbid_ids, position_stats

NUM_BUCKETS = 8  # static row capacities per step: compile time grows with it, padding waste shrinks
CONFIDENCE = {"topk_margin": "margin", "entropy": "neg_entropy", "origin": None, "random": None}  # else "prob"


def row_buckets(rows: int, num: int = NUM_BUCKETS) -> tuple[int, ...]:
    """Increasing static capacities for `rows` rows: `num` even fractions, rounded up to multiples of 8.

    Example:
        >>> row_buckets(576)
        (72, 144, 216, 288, 360, 432, 504, 576)
        >>> row_buckets(12)
        (8, 12)
    """
    return tuple(sorted({min(rows, -(-math.ceil(rows * k / num) // 8) * 8) for k in range(1, num + 1)}))


def feeding_rows(positions: jax.Array, logit_shift: bool) -> jax.Array:
    """Boolean [B, L]: the model rows whose logits the `positions` [B, L] use.

    Unshifted: the same rows. Shifted (Dream): position i takes row i - 1 and position 0 its own row.

    Example:
        >>> feeding_rows(jnp.array([[True, False, True, True]]), True).tolist()
        [[True, True, True, False]]
    """
    if not logit_shift:
        return positions
    rows = jnp.concatenate([positions[:, 1:], jnp.zeros_like(positions[:, :1])], axis=1)
    return rows.at[:, 0].set(rows[:, 0] | positions[:, 0])


def model_hidden(
    params: Any,
    config: ModelConfig,
    gen: GenerateConfig,
    x: jax.Array,
    attention_mask: jax.Array | None,
    prompt: jax.Array,
) -> jax.Array:
    """Final hidden states [branches, B, L, D]: one branch, or CFG's (conditional, unconditional) from one forward.

    CFG (SMDM/LLaDA): the unconditional branch has the `prompt` positions set to the mask id.
    """
    if gen.cfg_scale > 0:
        mask_id = config.require_mask_token()
        both = jnp.concatenate([x, jnp.where(prompt, mask_id, x)], axis=0)
        mask2 = None if attention_mask is None else jnp.concatenate([attention_mask, attention_mask], axis=0)
        hidden = decoder.apply(params, both, mask2, config=config, return_hidden=True)
        return hidden.reshape(2, *x.shape, hidden.shape[-1])
    return decoder.apply(params, x, attention_mask, config=config, return_hidden=True)[None]


def guided_logits(params: Any, config: ModelConfig, gen: GenerateConfig, hidden: jax.Array) -> jax.Array:
    """Raw (unshifted) float32 logits as the sampler sees them, from `model_hidden` rows [branches, ..., D].

    The decoder's head (`decoder.head`) on each branch; with CFG, `decoder.cfg_mix` of the two.
    """
    logits = decoder.head(params, config, hidden)
    if gen.cfg_scale > 0:
        return decoder.cfg_mix(logits[0], logits[1], gen.cfg_scale)
    return logits[0]


def _read_fields(stats: TokenStats, gen: GenerateConfig) -> TokenStats:
    """`stats` with zeros in the confidences `gen.alg` does not read."""
    keep = CONFIDENCE.get(gen.alg, "prob")
    return stats._replace(**{f: jnp.zeros_like(stats.prob) for f in ("prob", "margin", "neg_entropy") if f != keep})


def row_stats(
    params: Any,
    config: ModelConfig,
    gen: GenerateConfig,
    hidden: jax.Array,
    needed: jax.Array,
    key: jax.Array,
) -> TokenStats:
    """`position_stats` of the model rows marked in `needed` [B, L] (unshifted), from `model_hidden` output.

    Rows outside `needed` hold zeros, or the true statistics when they fill the chosen bucket. Only
    `token` and the confidence that `gen.alg` reads are computed; the other fields are zeros (the
    branches of `lax.switch` are not pruned by XLA, so unused statistics would cost a vocabulary pass).

    Example:
        >>> config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                      intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), config)
        >>> gen = GenerateConfig(max_new_tokens=4, steps=4, alg="maskgit_plus")
        >>> x = jnp.array([[1, 2, 63, 63]])
        >>> hidden = model_hidden(params, config, gen, x, None, x != 63)
        >>> s = row_stats(params, config, gen, hidden, x == 63, jax.random.key(0))
        >>> full = position_stats(decoder.apply(params, x, config=config), gen, jax.random.key(0))
        >>> bool((s.prob[x == 63] == full.prob[x == 63]).all())
        True
    """
    mask_id = config.require_mask_token()
    branches, batch, length, width = hidden.shape
    total = batch * length
    flat = hidden.reshape(branches, total, width)

    def full(flat: jax.Array, order: jax.Array) -> TokenStats:
        logits = guided_logits(params, config, gen, flat)
        stats = position_stats(forbid_ids(logits, gen, mask_id), gen, key, impl=config.sampling_impl)
        return jax.tree.map(lambda v: v.reshape(batch, length), _read_fields(stats, gen))

    def packed(size: int):
        def run(flat: jax.Array, order: jax.Array) -> TokenStats:
            index = order[:size]
            logits = guided_logits(params, config, gen, jnp.take(flat, index, axis=1))
            stats = position_stats(forbid_ids(logits, gen, mask_id), gen, key, impl=config.sampling_impl, rows=index)
            stats = _read_fields(stats, gen)
            return jax.tree.map(lambda v: jnp.zeros((total,), v.dtype).at[index].set(v).reshape(batch, length), stats)

        return run

    sizes = row_buckets(total)
    if len(sizes) == 1:
        return full(flat, None)
    flat_needed = needed.reshape(total)
    order = jnp.argsort(~flat_needed, stable=True)  # needed rows first, each group in row order
    bucket = jnp.searchsorted(jnp.asarray(sizes), jnp.sum(flat_needed))
    branches_fns = [packed(size) for size in sizes[:-1]] + [full]
    return jax.lax.switch(bucket, branches_fns, flat, order)
