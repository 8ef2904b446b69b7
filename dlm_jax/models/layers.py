"""Building blocks of the decoder: norms, rotary embeddings, attention and MLP (Flax Linen)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlm_jax.models.config import ModelConfig
from dlm_jax.ops.attention import dispatch_attention

_INIT = nn.initializers.normal(stddev=0.02)


def _param_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(_INIT, axes)


def _zeros(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


class Norm(nn.Module):
    """RMSNorm or LayerNorm computed in float32, cast back, then scaled (as HF does)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        pdt = jnp.dtype(cfg.param_dtype)
        scale = self.param("scale", _ones(("embed",)), (x.shape[-1],), pdt)
        x32 = x.astype(jnp.float32)
        if cfg.norm_kind == "rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
            return scale.astype(x.dtype) * y.astype(x.dtype)
        bias = self.param("bias", _zeros(("embed",)), (x.shape[-1],), pdt)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rope_tables(position_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, L, head_dim] in float32 for HF's rotate-half convention."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, H, D]; cos/sin [B, L, D].

    rotate_half(x) = [-x2, x1] is taken as a flip of the two halves times a sign: a reverse, whose
    gradient is a reverse again, where slices + concatenate would give the backward pads and adds.
    """
    halves = x.reshape(*x.shape[:-1], 2, x.shape[-1] // 2)
    sign = jnp.array([-1, 1], x.dtype)[:, None]
    rotated = (jnp.flip(halves, axis=-2) * sign).reshape(x.shape)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def matmul_2d(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """`x [..., *in] @ kernel [*in, *out]` (the last `n_in` axes of x contract) as ONE 2-D matmul.

    Same product as the N-D einsum; what differs is the backward. The weight gradient of an N-D
    einsum contracts several axes (batch and sequence); XLA canonicalises such a dot by
    materialising a transposed copy of the output gradient, and XLA:CPU fuses that copy with its
    elementwise producers (SwiGLU's backward) into a loop that reads with a row-sized stride: that
    was most of the train step's backward time. A 2-D dot's weight gradient contracts one axis and
    needs no copy. The reshapes are free (row-major bitcasts) on every backend, and sharding of
    the leading axes propagates through them.

    Example:
        >>> x, k = jnp.ones((2, 3, 4)), jnp.ones((4, 5, 6))
        >>> matmul_2d(x, k, 1).shape
        (2, 3, 5, 6)
    """
    inner = math.prod(kernel.shape[:n_in])
    y = jnp.dot(x.reshape(-1, inner), kernel.reshape(inner, -1))
    return y.reshape(*x.shape[: x.ndim - n_in], *kernel.shape[n_in:])


class Projection(nn.Module):
    """`x @ kernel (+ bias)` with the kernel stored in its natural N-D shape, run as a 2-D matmul (`matmul_2d`).

    (Flax's DenseGeneral draws a flat 2-D kernel and reshapes it, which breaks N-D logical
    sharding constraints on its initialiser under a mesh; an explicit parameter does not.)
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    use_bias: bool
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt, pdt = jnp.dtype(self.config.compute_dtype), jnp.dtype(self.config.param_dtype)
        kernel = self.param("kernel", _param_init(self.in_axes + self.out_axes), self.in_shape + self.out_shape, pdt)
        y = matmul_2d(x.astype(dt), kernel.astype(dt), len(self.in_shape))
        if self.use_bias:
            y = y + self.param("bias", _zeros(self.out_axes), self.out_shape, pdt).astype(dt)
        return y


class Attention(nn.Module):
    config: ModelConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x, attention_mask, rope, attention_bias):
        cfg = self.config
        d, hd = cfg.hidden_size, cfg.head_dim

        def proj(name, heads, axis):
            return Projection((d,), (heads, hd), ("embed",), (axis, "head_dim"), cfg.qkv_bias, cfg, name=name)(x)

        q = proj("q", cfg.num_heads, "heads")
        k = proj("k", cfg.num_kv_heads, "kv_heads")
        v = proj("v", cfg.num_kv_heads, "kv_heads")
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q = nn.with_logical_constraint(q, ("batch", "seq", "heads", "head_dim"))
        out = dispatch_attention(
            q,
            k,
            v,
            attention_mask=attention_mask,
            causal=self.causal,
            attention_bias=attention_bias,
            impl=cfg.attention_impl,
            softmax_dtype=jnp.dtype(cfg.softmax_dtype),
        )
        o = Projection((cfg.num_heads, hd), (d,), ("heads", "head_dim"), ("embed",), cfg.out_bias, cfg, name="o")
        return o(out)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, f = cfg.hidden_size, cfg.intermediate_size

        def dense(name, features_in, features_out, axes):  # the `nn.Dense` parameters, applied by `matmul_2d`
            return Projection((features_in,), (features_out,), axes[:1], axes[1:], cfg.mlp_bias, cfg, name=name)

        if cfg.mlp_kind == "swiglu":
            h = nn.silu(dense("gate", d, f, ("embed", "mlp"))(x))
            h = h * dense("up", d, f, ("embed", "mlp"))(x)
        else:
            h = nn.gelu(dense("fc", d, f, ("embed", "mlp"))(x), approximate=True)
        h = nn.with_logical_constraint(h, ("batch", "seq", "mlp"))
        return dense("down", f, d, ("mlp", "embed"))(h)


class Block(nn.Module):
    """Pre-norm transformer block; shaped for `nn.scan` (carry in, carry out)."""

    config: ModelConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x, attention_mask, rope, attention_bias):
        h = Attention(self.config, self.causal, name="attn")(
            Norm(self.config, name="attn_norm")(x), attention_mask, rope, attention_bias
        )
        x = x + h
        x = x + MLP(self.config, name="mlp")(Norm(self.config, name="mlp_norm")(x))
        x = nn.with_logical_constraint(x, ("batch", "seq", "embed"))
        return x, None
