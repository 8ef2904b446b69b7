"""Attention of a window of query rows against a whole sequence of keys (a K/V cache), with one dispatch.

The block-wise sampler runs the transformer on a few rows (the current block) while the other positions'
K/V come from a cache. Visibility is given per query row and per key: query i sees key j iff both are
valid (`q_valid`, `kv_valid`; padding and positions outside a suffix window are invalid keys). The XLA
reference and cuDNN take it as a boolean mask; the Pallas flash kernel as segment ids (1 = valid).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm_jax.ops.attention import resolve_attention_impl, xla_attention


def rows_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_valid: jax.Array,
    kv_valid: jax.Array,
    *,
    impl: str = "xla",
    softmax_dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """q [B, Lq, H, D] against k, v [B, Lk, KVH, D] (GQA: H a multiple of KVH) -> [B, Lq, H, D].

    `q_valid` [B, Lq], `kv_valid` [B, Lk] booleans. A valid query row gives what `dispatch_attention`
    gives that row of the full sequence when the same keys are visible; an invalid one is the mean of V
    ("xla") or 0 ("pallas"/"cudnn"). `impl` as in `resolve_attention_impl`.

    Example:
        >>> q, kv = jnp.ones((1, 2, 4, 8)), jnp.ones((1, 6, 2, 8))
        >>> rows_attention(q, kv, kv, jnp.ones((1, 2), bool), jnp.ones((1, 6), bool)).shape
        (1, 2, 4, 8)
    """
    impl = resolve_attention_impl(impl, dtype=q.dtype, head_dim=q.shape[-1], additive_bias=False)
    if impl == "pallas":
        from dlm_jax.ops.pallas.flash_attention import flash_attention

        return flash_attention(q, k, v, segment_ids=(q_valid.astype(jnp.int32), kv_valid.astype(jnp.int32)))
    mask = q_valid.astype(bool)[:, None, :, None] & kv_valid.astype(bool)[:, None, None, :]
    if impl == "cudnn":
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
        return out * q_valid[:, :, None, None].astype(out.dtype)
    return xla_attention(q, k, v, mask, softmax_dtype=softmax_dtype)
