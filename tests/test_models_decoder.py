"""Decoder behaviour that no HF reference covers: padding, modes, scan/remat, dtypes, axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=48,
    qkv_bias=True,
    mask_token_id=63,
)


@pytest.fixture(scope="module")
def params():
    return decoder.init(jax.random.key(0), CFG)


@pytest.mark.slow
def test_fully_padded_rows_give_finite_logits_and_real_rows_ignore_pads(params):
    ids = jnp.array([[5, 6, 7, 8, 9, 10], [1, 2, 7, 8, 9, 10]])
    mask = jnp.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    out = decoder.apply(params, ids, mask, config=CFG)
    assert np.isfinite(np.asarray(out)).all()
    # Row 1's real tokens 7..10 sit at positions 0..3 and see only each other: same as an unpadded call.
    alone = decoder.apply(params, ids[1:, 2:], config=CFG)
    np.testing.assert_allclose(out[1, 2:], alone[0], rtol=1e-5, atol=1e-5)


def test_position_ids_follow_dreams_rule():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = decoder.default_position_ids(jnp.zeros((2, 5), jnp.int32), mask)
    np.testing.assert_array_equal(pos, [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])


def test_causal_mode_equals_an_explicit_boolean_mask_and_differs_from_bidirectional(params):
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 63)
    causal = decoder.apply(params, ids, config=CFG, causal=True)
    tril = jnp.tril(jnp.ones((7, 7), bool))[None, None]
    explicit = decoder.apply(params, ids, attention_bias=tril, config=CFG)
    np.testing.assert_allclose(causal, explicit, rtol=1e-6, atol=1e-6)
    additive = decoder.apply(params, ids, attention_bias=jnp.where(tril, 0.0, -1e9), config=CFG)
    np.testing.assert_allclose(causal, additive, rtol=1e-5, atol=1e-5)
    bidir = decoder.apply(params, ids, config=CFG)
    # Only the last position sees the same context in the first layer; the rest must differ.
    assert np.abs(np.asarray(bidir[:, 0] - causal[:, 0])).max() > 1e-3


@pytest.mark.slow
def test_scan_unroll_and_remat_are_the_same_function(params):
    ids = jax.random.randint(jax.random.key(2), (2, 5), 0, 63)
    ref = decoder.apply(params, ids, config=CFG)
    for overrides in ({"scan_layers": False}, {"remat": True}):
        out = decoder.apply(params, ids, config=CFG.replace(**overrides))
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda p, c: decoder.apply(p, ids, config=c).sum())
    g_ref = grad(params, CFG)
    for policy in ("full", "dots"):
        g_remat = grad(params, CFG.replace(remat=True, remat_policy=policy))
        for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="remat_policy='some' is not one of"):
        CFG.replace(remat_policy="some")


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(params):
    ids = jax.random.randint(jax.random.key(3), (2, 6), 0, 63)
    ref = decoder.apply(params, ids, config=CFG)
    out = decoder.apply(params, ids, config=CFG.replace(compute_dtype="bfloat16"))
    assert out.dtype == jnp.float32
    assert np.abs(np.asarray(out - ref)).max() < 0.05 * np.abs(np.asarray(ref)).max()


def test_every_parameter_has_logical_axes(params):
    axes = decoder.logical_axes(CFG)
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_a = dict(
        jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    )
    for path, leaf in flat_p:
        spec = flat_a[path]
        assert len(spec) == leaf.ndim, path
    assert flat_a[next(p for p, _ in flat_p if "q" in str(p) and "kernel" in str(p))] == (
        jax.sharding.PartitionSpec("layers", "embed", "heads", "head_dim")
    )
