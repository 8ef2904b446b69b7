"""The decoder on a window of rows against a K/V cache: the model half of block-wise (cached) decoding.

`forward_rows` runs the same layers as `decoder.apply` (the Flax modules of `layers.py` applied to each
layer's slice of the parameters) on the rows `[start, start + S)` of a sequence of length L only. Each
layer writes the window's fresh K/V into the cache and attends with the window's queries to all L keys,
so a window over the whole sequence fills the cache from scratch (and gives `decoder.apply`'s hidden
states), and a window over a few rows reuses every other position's cached K/V. Bidirectional models only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dlm_jax.models.config import ModelConfig
from dlm_jax.models.layers import MLP, Norm, Projection, apply_rope, rope_tables
from dlm_jax.ops.rows_attention import rows_attention


class KVCache(NamedTuple):
    """Post-RoPE keys and values of every position, per layer: [layers, B, L, KVH, head_dim] (compute dtype)."""

    k: jax.Array
    v: jax.Array


def empty_cache(config: ModelConfig, batch: int, length: int) -> KVCache:
    """A zero cache for `batch` sequences of `length` positions.

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        ...                   intermediate_size=64)
        >>> empty_cache(cfg, 3, 10).k.shape
        (2, 3, 10, 2, 8)
    """
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    zeros = jnp.zeros(shape, jnp.dtype(config.compute_dtype))
    return KVCache(zeros, zeros)


def _per_slice(config: ModelConfig) -> bool:
    """16-bit weights on XLA:CPU: slice (and upcast) one layer at a time, as `decoder` does, or XLA hoists a
    float32 copy of every stacked weight out of the sampler loop."""
    return jax.default_backend() == "cpu" and jnp.dtype(config.param_dtype).itemsize == 2


def _embed(params: Any, config: ModelConfig, ids: jax.Array, positions: jax.Array) -> jax.Array:
    dt = jnp.dtype(config.compute_dtype)
    table = params["embed"]["embedding"]
    if _per_slice(config):
        table, ids = jax.lax.optimization_barrier((table, ids))
    x = jnp.take(table, ids, axis=0).astype(dt)
    if config.position_kind == "learned":
        x = x + jnp.take(params["pos_embed"]["embedding"], positions, axis=0).astype(dt)
    return x.astype(dt)


def _layer(layer: Any, config: ModelConfig, x, rope, k_all, v_all, start, q_valid, kv_valid):
    """One pre-norm block on the window `x` [B, S, D]; returns (x, k_all, v_all) with the window's K/V written."""
    d, hd = config.hidden_size, config.head_dim
    h = Norm(config).apply({"params": layer["attn_norm"]}, x)

    def proj(name: str, heads: int, axis: str) -> jax.Array:
        module = Projection((d,), (heads, hd), ("embed",), (axis, "head_dim"), config.qkv_bias, config)
        return module.apply({"params": layer["attn"][name]}, h)

    q = proj("q", config.num_heads, "heads")
    k = proj("k", config.num_kv_heads, "kv_heads")
    v = proj("v", config.num_kv_heads, "kv_heads")
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k_all = jax.lax.dynamic_update_slice_in_dim(k_all, k.astype(k_all.dtype), start, axis=1)
    v_all = jax.lax.dynamic_update_slice_in_dim(v_all, v.astype(v_all.dtype), start, axis=1)
    out = rows_attention(q, k_all.astype(q.dtype), v_all.astype(v.dtype), q_valid, kv_valid,
                         impl=config.attention_impl, softmax_dtype=jnp.dtype(config.softmax_dtype))
    o = Projection((config.num_heads, hd), (d,), ("heads", "head_dim"), ("embed",), config.out_bias, config)
    x = x + o.apply({"params": layer["attn"]["o"]}, out)
    x = x + MLP(config).apply({"params": layer["mlp"]}, Norm(config).apply({"params": layer["mlp_norm"]}, x))
    return x, k_all, v_all


def forward_rows(
    params: Any,
    config: ModelConfig,
    ids: jax.Array,
    positions: jax.Array,
    start: jax.Array | int,
    q_valid: jax.Array,
    kv_valid: jax.Array,
    cache: KVCache,
) -> tuple[jax.Array, KVCache]:
    """Final hidden states [B, S, D] of the rows `[start, start + S)` and the cache with their K/V written.

    `ids`, `positions` (position ids), `q_valid` [B, S]: the window's tokens, positions and real-token
    flags; `kv_valid` [B, L]: the keys every window row may see; `cache` [layers, B, L, ...]: the other
    positions' K/V. `start` may be traced. The head (`decoder.head`) turns the result into logits.

    Example:
        >>> from dlm_jax.models import decoder
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params, ids = decoder.init(jax.random.key(0), cfg), jnp.array([[1, 2, 63, 63]])
        >>> pos, ones = jnp.arange(4)[None], jnp.ones((1, 4), bool)
        >>> full, cache = forward_rows(params, cfg, ids, pos, 0, ones, ones, empty_cache(cfg, 1, 4))
        >>> rows, _ = forward_rows(params, cfg, ids[:, 2:], pos[:, 2:], 2, ones[:, 2:], ones, cache)
        >>> bool(jnp.allclose(rows, full[:, 2:], atol=1e-5))
        True
        >>> bool(jnp.allclose(full, decoder.apply(params, ids, config=cfg, return_hidden=True), atol=1e-5))
        True
    """
    if config.attention_mode != "bidirectional":
        raise ValueError(f"cached decoding needs a bidirectional model, not attention_mode={config.attention_mode!r}")
    x = _embed(params, config, ids, positions)
    rope = rope_tables(positions, config.head_dim, config.rope_theta) if config.position_kind != "learned" else None

    stacked = params["layers"]

    def body(carry, xs):
        h, i = carry
        k_all, v_all = xs
        weights = stacked
        if _per_slice(config):
            weights, i = jax.lax.optimization_barrier((stacked, i))
        layer = jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, i, keepdims=False), weights)
        h, k_all, v_all = _layer(layer, config, h, rope, k_all, v_all, start, q_valid, kv_valid)
        return (h, i + 1), (k_all, v_all)

    unroll = 1 if config.scan_layers else config.num_layers
    (x, _), (k, v) = jax.lax.scan(body, (x, jnp.int32(0)), (cache.k, cache.v), unroll=unroll)
    return Norm(config).apply({"params": params["final_norm"]}, x), KVCache(k, v)
