"""Attention entry point: one function every model calls, dispatching to an implementation.

The XLA reference lives here; the Pallas flash kernel (`dlm_jax.ops.pallas.flash_attention`) and
cuDNN (`jax.nn.dot_product_attention`) are reached through `dispatch_attention`, so models never
know which kernel ran.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "pallas", "cudnn", "auto")


def combine_masks(
    attention_mask: jax.Array | None,
    *,
    causal: bool,
    attention_bias: jax.Array | None,
    q_len: int,
    kv_len: int,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Fold padding, causality and an explicit mask into (bool mask, additive bias).

    `attention_mask` is the 2-D [B, L] padding mask: query i may see key j iff both are
    real tokens (Dream's rule: pad rows and pad columns are both masked). `attention_bias`
    is either boolean [B|1, H|1, Lq, Lk] (True = may attend) or additive float.
    Returns a boolean mask broadcastable to [B, H, Lq, Lk] (or None) and a float bias (or None).
    """
    mask = None
    if attention_mask is not None:
        valid = attention_mask.astype(bool)
        mask = valid[:, None, :q_len, None] & valid[:, None, None, :kv_len]
    if causal:
        tri = jnp.tril(jnp.ones((q_len, kv_len), dtype=bool))[None, None]
        mask = tri if mask is None else mask & tri
    bias = None
    if attention_bias is not None:
        if attention_bias.dtype == jnp.bool_:
            mask = attention_bias if mask is None else mask & attention_bias
        else:
            bias = attention_bias
    return mask, bias


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    softmax_dtype: jnp.dtype = jnp.float32,
    scale: float | None = None,
) -> jax.Array:
    """Reference attention. q [B, Lq, H, D]; k, v [B, Lk, KVH, D]; GQA without repeating K/V.

    Fully masked rows (pads) get uniform weights instead of NaN. Both matmuls run head-major: q, k
    and v are transposed once to [B, KVH, (group, Lq) | Lk, D] (small tensors), so the scores come
    out of the dot in their natural [B, KVH, group * Lq, Lk] layout and neither the forward nor the
    backward transposes an [L, L]-sized tensor.
    """
    b, lq, h, d = q.shape
    kvh, lk = k.shape[2], k.shape[1]
    groups = h // kvh
    scale = d**-0.5 if scale is None else scale
    qh = q.reshape(b, lq, kvh, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, groups * lq, d)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=softmax_dtype)
    scores = (scores.astype(softmax_dtype) * scale).reshape(b, h, lq, lk)
    if bias is not None:
        scores = scores + bias.astype(softmax_dtype)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(softmax_dtype).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kvh, groups * lq, lk)
    out = jnp.einsum("bkqs,bksd->bkqd", weights, vh)
    return out.reshape(b, kvh, groups, lq, d).transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d)


def resolve_attention_impl(impl: str, *, dtype: jnp.dtype, head_dim: int, additive_bias: bool) -> str:
    """Pick the concrete implementation for `impl` on the default backend, or raise a clear ValueError.

    - "auto": CPU -> "xla"; TPU -> "pallas"; GPU -> "cudnn" when cuDNN covers the call (bf16/fp16,
      head_dim a multiple of 8 up to 128), else "xla" (our Pallas kernel is written for TPU Mosaic).
    - "pallas": TPU, or CPU in interpret mode (slow, for tests). Refused on GPU.
      An additive float `attention_bias` is not a kernel input (it would need a dBias path and an
      [L, L] float read per head): such calls run the XLA reference instead.
    - "cudnn": GPU only, bf16/fp16 inputs.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl={impl!r} is not one of {IMPLEMENTATIONS}")
    backend = jax.default_backend()
    cudnn_ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
    if impl == "auto":
        if backend == "tpu":
            return "xla" if additive_bias else "pallas"
        if backend == "gpu" and cudnn_ok:
            return "cudnn"
        return "xla"
    if impl == "pallas":
        if backend == "gpu":
            raise ValueError(
                "attention_impl='pallas' is a TPU (Mosaic) kernel and cannot lower on GPU; use 'cudnn', 'xla' or 'auto'"
            )
        return "xla" if additive_bias else "pallas"
    if impl == "cudnn":
        if backend != "gpu":
            raise ValueError(
                f"attention_impl='cudnn' needs a GPU backend, this process runs on {backend!r}; "
                "use 'xla', 'pallas' or 'auto'"
            )
        if not cudnn_ok:
            raise ValueError(
                f"attention_impl='cudnn' needs bf16/fp16 inputs and head_dim a multiple of 8 up to 128, "
                f"got dtype {jnp.dtype(dtype).name} and head_dim {head_dim}; set dtype or use 'xla'/'auto'"
            )
    return impl


def _pallas_attention(q, k, v, attention_mask, causal, attention_bias):
    from dlm_jax.ops.pallas.flash_attention import flash_attention

    segment_ids = None
    if attention_mask is not None:
        ids = attention_mask.astype(jnp.int32)
        segment_ids = (ids[:, : q.shape[1]], ids[:, : k.shape[1]])
    return flash_attention(q, k, v, segment_ids=segment_ids, mask=attention_bias, causal=causal)


def _cudnn_attention(q, k, v, attention_mask, causal, attention_bias):
    mask, bias = combine_masks(
        attention_mask, causal=False, attention_bias=attention_bias, q_len=q.shape[1], kv_len=k.shape[1]
    )
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal, implementation="cudnn")
    if attention_mask is not None:  # pad rows: 0, as the Pallas kernel (cuDNN leaves them unspecified)
        out = out * attention_mask[:, : q.shape[1], None, None].astype(out.dtype)
    return out


def dispatch_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    causal: bool = False,
    attention_bias: jax.Array | None = None,
    impl: str = "xla",
    softmax_dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Run attention with the chosen implementation (see `resolve_attention_impl`).

    q [B, Lq, H, D]; k, v [B, Lk, KVH, D]. All implementations agree on every query row that can
    see at least one key; a row that sees none (a pad row) is the mean of V under "xla" and 0 under
    "pallas"/"cudnn". The Pallas kernel keeps its softmax in float32 whatever `softmax_dtype` says.

    Example:
        >>> q = k = v = jnp.ones((1, 4, 2, 8))
        >>> dispatch_attention(q, k, v, impl="xla").shape
        (1, 4, 2, 8)
    """
    additive = attention_bias is not None and attention_bias.dtype != jnp.bool_
    impl = resolve_attention_impl(impl, dtype=q.dtype, head_dim=q.shape[-1], additive_bias=additive)
    if impl == "pallas":
        return _pallas_attention(q, k, v, attention_mask, causal, attention_bias)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, attention_mask, causal, attention_bias)
    mask, bias = combine_masks(
        attention_mask, causal=causal, attention_bias=attention_bias, q_len=q.shape[1], kv_len=k.shape[1]
    )
    return xla_attention(q, k, v, mask, bias, softmax_dtype=softmax_dtype)
