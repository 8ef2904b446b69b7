"""The decoder stack shared by every family, and its pure functional `init` / `apply`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlm_jax.models.config import ModelConfig
from dlm_jax.models.layers import Block, Norm, _param_init, matmul_2d, rope_tables

Params = dict[str, Any]


def default_position_ids(input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    """Dream's rule: `cumsum(mask) - 1` with pad positions set to 1; plain arange without a mask."""
    if attention_mask is None:
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    mask = attention_mask.astype(jnp.int32)
    return jnp.where(mask == 1, jnp.cumsum(mask, axis=-1) - 1, 1)


class Decoder(nn.Module):
    """Embeddings -> N pre-norm blocks (scanned) -> final norm -> vocabulary head."""

    config: ModelConfig
    causal: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, attention_bias=None, return_hidden=False):
        cfg = self.config
        dt, pdt = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dt,
            param_dtype=pdt,
            embedding_init=_param_init(("vocab", "embed")),
            name="embed",
        )
        if position_ids is None:
            position_ids = default_position_ids(input_ids, attention_mask)
        per_slice = _upcasts_whole_weights(cfg) and not self.is_initializing()
        if per_slice:  # gather the rows from a table tied to the ids, so no float32 table is hoisted
            table, ids = jax.lax.optimization_barrier((embed.embedding, input_ids))
            x = jnp.take(table, ids, axis=0).astype(dt)
        else:
            x = embed(input_ids)
        rope = None
        if cfg.position_kind == "learned":
            x = x + nn.Embed(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                dtype=dt,
                param_dtype=pdt,
                embedding_init=_param_init((None, "embed")),
                name="pos_embed",
            )(position_ids)
        else:
            rope = rope_tables(position_ids, cfg.head_dim, cfg.rope_theta)
        x = nn.with_logical_constraint(x.astype(dt), ("batch", "seq", "embed"))

        block = Block
        if cfg.remat:
            block = nn.remat(Block, prevent_cse=False, policy=remat_policy(cfg))
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            unroll=1 if cfg.scan_layers else cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        if per_slice:
            x = _scan_layer_slices(self.variables["params"]["layers"], cfg, self.causal, x, attention_mask, rope,
                                   attention_bias)
        else:
            x, _ = stack(cfg, self.causal, name="layers")(x, attention_mask, rope, attention_bias)
        x = Norm(cfg, name="final_norm")(x)
        if return_hidden:
            return x
        if cfg.tie_embeddings:
            weights = {"embed": {"embedding": embed.embedding}}
        else:
            weights = {"lm_head": {"kernel": _HeadKernel(cfg, name="lm_head")()}}
        return nn.with_logical_constraint(head(weights, cfg, x), ("batch", "seq", "vocab"))


class _HeadKernel(nn.Module):
    """The untied LM head's weight `lm_head/kernel` [D, V] (what `nn.Dense` would store); `head` applies it."""

    config: ModelConfig

    @nn.compact
    def __call__(self) -> jax.Array:
        cfg = self.config
        shape = (cfg.hidden_size, cfg.vocab_size)
        return self.param("kernel", _param_init(("embed", "vocab")), shape, jnp.dtype(cfg.param_dtype))


def _upcasts_whole_weights(config: ModelConfig) -> bool:
    """XLA:CPU computes 16-bit floats in float32 and would convert every stacked weight whole, then hoist it.

    Its float normalization upcasts even the dynamic-slice that takes one layer out of a stacked
    weight, so `convert(W)` of the whole [layers, ...] array becomes loop-invariant and is hoisted out
    of the layer scan and the sampler loop: a float32 copy of the model (29 GB for a bf16 7B).
    """
    return jax.default_backend() == "cpu" and jnp.dtype(config.param_dtype).itemsize == 2


_HEAD_CHUNK_BYTES = 64 << 20


def _head_by_vocab_chunks(params: Params, config: ModelConfig, h: jax.Array) -> jax.Array:
    """`head` on XLA:CPU for 16-bit weights: vocabulary chunks, each upcast and multiplied in turn.

    Left to itself XLA:CPU either keeps a float32 copy of the whole head or, inside a loop branch,
    fuses the upcast into the matmul, which then runs ~100x slower. Each chunk here is sliced from
    a weight tied to the chunk index, so it is upcast alone into its own buffer (at most
    `_HEAD_CHUNK_BYTES`) and multiplied in float32, then rounded to `compute_dtype` as a 16-bit
    matmul's result is.
    """
    dt = jnp.dtype(config.compute_dtype)
    tied = config.tie_embeddings
    weight = params["embed"]["embedding"] if tied else params["lm_head"]["kernel"]
    axis = 0 if tied else 1
    info = jnp.finfo(dt)  # rounded as stored, even where XLA would keep the float32 it computed
    hidden = jax.lax.reduce_precision(h.astype(jnp.float32), exponent_bits=info.nexp, mantissa_bits=info.nmant)
    vocab = weight.shape[axis]
    width = max(1, min(vocab, _HEAD_CHUNK_BYTES // (4 * h.shape[-1])))
    full, rest = divmod(vocab, width)

    def part(w: jax.Array, start: jax.Array, size: int) -> jax.Array:
        chunk = jax.lax.dynamic_slice_in_dim(w, start, size, axis=axis).astype(jnp.float32)
        return jax.lax.dot_general(hidden, chunk, (((h.ndim - 1,), (1 - axis,)), ((), ()))).astype(dt)

    def body(i, _):
        w, i = jax.lax.optimization_barrier((weight, i))
        return i + 1, part(w, i * width, width)

    _, chunks = jax.lax.scan(body, jnp.int32(0), None, length=full)
    logits = jnp.moveaxis(chunks, 0, -2).reshape(*h.shape[:-1], full * width)
    if rest:
        w, start = jax.lax.optimization_barrier((weight, jnp.int32(full * width)))
        logits = jnp.concatenate([logits, part(w, start, rest)], axis=-1)
    return logits.astype(jnp.float32)


def _scan_layer_slices(stacked: Params, config: ModelConfig, causal: bool, x, attention_mask, rope, attention_bias):
    """The layer stack as `nn.scan` runs it, but each layer's weights are sliced inside the loop body.

    The stacked weights pass an optimization barrier together with the layer index, so the slice
    (and any float32 upcast of it) depends on the loop and stays per layer: one layer's weights in
    float32 at a time. Numerically identical to the scanned module.
    """
    block = Block(config, causal)

    def body(carry, _):
        h, i = carry
        weights, i = jax.lax.optimization_barrier((stacked, i))
        layer = jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, i, keepdims=False), weights)
        h, _ = block.apply({"params": layer}, h, attention_mask, rope, attention_bias)
        return (h, i + 1), None

    if config.remat:
        body = jax.checkpoint(body, prevent_cse=False, policy=remat_policy(config))
    unroll = 1 if config.scan_layers else config.num_layers
    (x, _), _ = jax.lax.scan(body, (x, jnp.int32(0)), None, length=config.num_layers, unroll=unroll)
    return x


def remat_policy(config: ModelConfig) -> Callable[..., bool]:
    """The checkpoint policy `config.remat_policy` names: what a rematerialised layer keeps for the backward."""
    if config.remat_policy == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return jax.checkpoint_policies.nothing_saveable


def _is_causal(config: ModelConfig, causal: bool | None) -> bool:
    return config.attention_mode == "causal" if causal is None else causal


def init(rng: jax.Array, config: ModelConfig) -> Params:
    """Random parameters for `config` (a plain nested dict of arrays).

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = init(jax.random.key(0), cfg)
        >>> params["layers"]["attn"]["q"]["kernel"].shape  # [layers, hidden, heads, head_dim]
        (2, 32, 4, 8)
    """
    dummy = jnp.zeros((1, 1), jnp.int32)
    variables = Decoder(config).init(rng, dummy)
    return nn.meta.unbox(variables["params"])


def logical_axes(config: ModelConfig) -> Params:
    """Logical axis names for every parameter (a tree of `PartitionSpec` of names)."""
    dummy = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), dummy))
    return nn.get_partition_spec(boxed)["params"]


def apply(
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    attention_bias: jax.Array | None = None,
    *,
    config: ModelConfig,
    causal: bool | None = None,
    return_hidden: bool = False,
) -> jax.Array:
    """Raw (unshifted) float32 logits [B, L, V].

    `attention_mask` [B, L] (1 = token, 0 = pad) masks pad rows and columns and sets Dream's
    position ids; `attention_bias` adds a boolean (True = attend) or additive [B|1, H|1, L, L]
    mask on top (DiffuLLaMA's annealing). `causal` overrides `config.attention_mode`.

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = init(jax.random.key(0), cfg)
        >>> logits = apply(params, jnp.array([[1, 2, 3]]), config=cfg)
        >>> logits.shape, logits.dtype
        ((1, 3, 64), dtype('float32'))
        >>> padded = apply(params, jnp.array([[0, 1, 2, 3]]), jnp.array([[0, 1, 1, 1]]), config=cfg)
        >>> bool(jnp.allclose(padded[:, 1:], logits, atol=1e-5))  # a left pad changes nothing
        True
    """
    return Decoder(config, _is_causal(config, causal)).apply(
        {"params": params}, input_ids, attention_mask, position_ids, attention_bias, return_hidden
    )


def head(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """THE LM head: float32 logits [..., V] from final hidden states [..., D] (`apply(..., return_hidden=True)`).

    `params` needs only `lm_head/kernel` [D, V], or `embed/embedding` [V, D] when the head is tied;
    both operands are cast to `compute_dtype` first. The decoder's own forward ends with it, so
    logits of any subset of rows equal those rows of `apply`.

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params, ids = init(jax.random.key(0), cfg), jnp.array([[1, 2, 3]])
        >>> hidden = apply(params, ids, config=cfg, return_hidden=True)
        >>> bool((head(params, cfg, hidden) == apply(params, ids, config=cfg)).all())
        True
    """
    dt = jnp.dtype(config.compute_dtype)
    h = hidden.astype(dt)
    if _upcasts_whole_weights(config):
        return _head_by_vocab_chunks(params, config, h)
    if config.tie_embeddings:
        return matmul_2d(h, params["embed"]["embedding"].astype(dt).T, 1).astype(jnp.float32)
    return matmul_2d(h, params["lm_head"]["kernel"].astype(dt), 1).astype(jnp.float32)


def cfg_mix(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
    """Classifier-free guidance (SMDM/LLaDA): `uncond + (scale + 1) * (cond - uncond)` in float32.

    `uncond` comes from the same input with the prompt replaced by mask tokens; `scale=0` gives `cond`.

    Example:
        >>> cfg_mix(jnp.array([2.0]), jnp.array([1.0]), 0.5).tolist()
        [2.5]
    """
    return uncond + jnp.float32(scale + 1) * (cond - uncond)


def shift_logits(values: jax.Array) -> jax.Array:
    """Dream's one-place right shift along the position axis 1 of [B, L, ...] values.

    Position i takes the value made at i - 1 (a shifted model predicts token i there); position 0
    keeps its own. Logits, hidden states and per-position statistics shift alike.

    Example:
        >>> shift_logits(jnp.array([[10, 11, 12]])).tolist()
        [[10, 10, 11]]
    """
    return jnp.concatenate([values[:, :1], values[:, :-1]], axis=1)
