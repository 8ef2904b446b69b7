"""Pallas flash attention (interpret mode) vs the XLA reference: outputs, gradients, masks, dispatch."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from dlm_jax.ops.attention import combine_masks, dispatch_attention, resolve_attention_impl, xla_attention
from dlm_jax.ops.pallas.flash_attention import flash_attention

# Tolerances (max abs error over valid rows; inputs ~N(0,1), outputs/grads O(1)):
F32_TOL = 2e-5  # float32: only summation order differs
BF16_TOL = 6e-2  # bfloat16 inputs: both paths round P to bf16 before P@V, in different blocks

CASES = [
    # name, B, L, H, KVH, D, causal, padded rows, bool mask, dtype
    ("gqa4_ragged_pad", 2, 37, 4, 1, 16, False, True, False, jnp.float32),
    ("gqa7_causal", 1, 24, 7, 1, 8, True, False, False, jnp.float32),
    ("gqa1_annealing_mask_pad", 2, 20, 2, 2, 16, False, True, True, jnp.float32),
    ("bf16_gqa2_causal_pad", 2, 33, 4, 2, 16, True, True, False, jnp.bfloat16),
]


def _inputs(seed, b, length, h, kvh, d, padded, with_mask, dtype):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, length, n, d)).astype(np.float32) for n in (h, kvh, kvh))
    valid = np.ones((b, length), np.int32)
    if padded:
        for row in range(b):
            valid[row, : rng.integers(1, length // 2)] = 0  # left padding, Dream style
    mask = None
    if with_mask:  # annealing-style mask: a random causal-ish pattern per example, shared over heads
        mask = (rng.random((b, 1, length, length)) < 0.6) | np.eye(length, dtype=bool)
        mask = jnp.asarray(mask)
    cast = lambda x: jnp.asarray(x, dtype)
    return cast(q), cast(k), cast(v), jnp.asarray(valid), mask, rng


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_flash_matches_reference_outputs_and_grads(case):
    name, b, length, h, kvh, d, causal, padded, with_mask, dtype = case
    q, k, v, valid, mask, rng = _inputs(zlib.crc32(name.encode()), b, length, h, kvh, d, padded, with_mask, dtype)
    ref_mask, _ = combine_masks(valid, causal=causal, attention_bias=mask, q_len=length, kv_len=length)
    rows = valid.astype(bool)[:, :, None, None]
    cot = jnp.asarray(rng.standard_normal(q.shape), dtype) * rows  # pad rows carry no gradient

    def run(fn):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cot)

    flash = lambda q, k, v: flash_attention(
        q, k, v, segment_ids=(valid, valid), mask=mask, causal=causal, block_q=16, block_k=16
    )
    ref = lambda q, k, v: xla_attention(q, k, v, ref_mask)
    out, grads = jax.jit(lambda: run(flash))()
    ref_out, ref_grads = run(ref)
    tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
    # Every element written: interpret mode fills unwritten outputs with NaN (see the test below).
    assert out.dtype == dtype and all(bool(jnp.isfinite(x.astype(jnp.float32)).all()) for x in (out, *grads))
    err = jnp.max(jnp.abs(jnp.where(rows, out.astype(jnp.float32) - ref_out.astype(jnp.float32), 0.0)))
    assert float(err) < tol, float(err)
    assert float(jnp.abs(jnp.where(rows, 0.0, out.astype(jnp.float32))).max()) == 0.0  # pad rows are 0
    for g, rg in zip(grads, ref_grads, strict=True):
        assert g.shape == rg.shape and g.dtype == rg.dtype
        gerr = float(jnp.max(jnp.abs(g.astype(jnp.float32) - rg.astype(jnp.float32))))
        assert gerr < tol * max(1.0, float(jnp.abs(rg.astype(jnp.float32)).max())), gerr


def test_interpret_mode_poisons_unwritten_output():
    """The finiteness checks above are meaningful: a block the kernel never writes comes back NaN."""

    def kernel(x_ref, o_ref):
        @pl.when(pl.program_id(0) == 0)
        def _():
            o_ref[...] = x_ref[...]

    x = jnp.ones((16, 128))
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    out = pl.pallas_call(kernel, grid=(2,), in_specs=[spec], out_specs=spec, out_shape=x, interpret=True)(x)
    assert bool(jnp.isnan(out[8:]).all()) and bool((out[:8] == 1).all())


def test_dispatch_pallas_matches_xla_on_decoder_inputs():
    """The decoder's arguments (attention_mask, causal, boolean bias) map onto the kernel's inputs."""
    q, k, v, valid, mask, _ = _inputs(3, 2, 12, 4, 2, 8, True, True, jnp.float32)
    kwargs = dict(attention_mask=valid, causal=True, attention_bias=mask)
    out = dispatch_attention(q, k, v, impl="pallas", **kwargs)
    ref = dispatch_attention(q, k, v, impl="xla", **kwargs)
    rows = valid.astype(bool)[:, :, None, None]
    assert float(jnp.max(jnp.abs(jnp.where(rows, out - ref, 0.0)))) < F32_TOL


def test_additive_bias_falls_back_to_reference():
    q, k, v, valid, _, rng = _inputs(4, 1, 10, 2, 1, 8, False, False, jnp.float32)
    bias = jnp.asarray(rng.standard_normal((1, 2, 10, 10)), jnp.float32)
    out = dispatch_attention(q, k, v, attention_bias=bias, impl="pallas")
    ref = xla_attention(q, k, v, None, bias)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_dispatch_errors_and_auto_choice():
    assert jax.default_backend() == "cpu"
    assert resolve_attention_impl("auto", dtype=jnp.bfloat16, head_dim=64, additive_bias=False) == "xla"
    q = jnp.ones((1, 4, 2, 8))
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a GPU"):
        dispatch_attention(q, q, q, impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl='flash' is not one of"):
        dispatch_attention(q, q, q, impl="flash")
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash_attention(q, jnp.ones((1, 4, 3, 8)), jnp.ones((1, 4, 3, 8)))
    with pytest.raises(ValueError, match="block_q must be a positive multiple of 8"):
        flash_attention(q, q, q, block_q=12)
    with pytest.raises(ValueError, match="mask must be boolean"):
        flash_attention(q, q, q, mask=jnp.ones((1, 2, 4, 5), bool))


def test_kernels_lower_to_mosaic_for_tpu():
    """Forward and backward pass the Pallas->Mosaic lowering for a TPU target (no TPU needed to lower)."""
    q = jnp.zeros((1, 256, 4, 128), jnp.bfloat16)
    kv = jnp.zeros((1, 256, 1, 128), jnp.bfloat16)
    ids = jnp.ones((1, 256), jnp.int32)
    mask = jnp.ones((1, 1, 256, 256), bool)

    def loss(q, k, v):
        out = flash_attention(q, k, v, segment_ids=(ids, ids), mask=mask, causal=True, interpret=False)
        return out.astype(jnp.float32).sum()

    exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=("tpu",))(q, kv, kv)
    assert exported.mlir_module().count("tpu_custom_call") == 3  # forward, dQ, dK/dV
