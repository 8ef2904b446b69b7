"""16-bit weights on XLA:CPU: no whole-model float32 copy, and the same numbers as the scanned module.

XLA:CPU computes bf16 in float32 and hoists the upcast of every stacked weight out of the layer
scan and the sampler loop (a 7B model needed 29 GB). The decoder slices each layer inside the loop
instead, and runs the head in vocabulary chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig


def _config(layers: int, tie: bool = False, remat: bool = False) -> ModelConfig:
    return ModelConfig(
        family="dream", vocab_size=1000, hidden_size=128, num_layers=layers, num_heads=4, num_kv_heads=2,
        intermediate_size=512, qkv_bias=True, tie_embeddings=tie, mask_token_id=999, remat=remat,
        param_dtype="bfloat16", compute_dtype="bfloat16", max_position_embeddings=64,
    )


def _loop_temp_bytes(config: ModelConfig) -> int:
    """Temporary bytes of a sampler-like loop: three forwards of the model inside a while loop."""
    params = jax.eval_shape(lambda: decoder.init(jax.random.key(0), config))
    ids = jax.ShapeDtypeStruct((1, 16), jnp.int32)

    def loop(params, ids):
        def step(carry):
            total, i = carry
            return total + decoder.apply(params, ids + i, config=config).sum(), i + 1

        return jax.lax.while_loop(lambda c: c[1] < 3, step, (jnp.float32(0), 0))[0]

    return jax.jit(loop).lower(params, ids).compile().memory_analysis().temp_size_in_bytes


def _f32_bytes(config: ModelConfig) -> int:
    shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), config))
    return sum(4 * x.size for x in jax.tree.leaves(shapes))


def test_temporaries_do_not_grow_with_the_layers(monkeypatch):
    small, big = _loop_temp_bytes(_config(2)), _loop_temp_bytes(_config(8))
    stacked_f32 = _f32_bytes(_config(8))  # every weight in float32
    assert big < 1.1 * small, (small, big)
    assert big < 0.3 * stacked_f32, (big, stacked_f32)
    # Without the per-layer slicing, XLA keeps every weight in float32 at once.
    monkeypatch.setattr(decoder, "_upcasts_whole_weights", lambda config: False)
    assert _loop_temp_bytes(_config(8)) > 0.9 * stacked_f32


@pytest.mark.slow
@pytest.mark.parametrize("tie,remat", [(False, False), pytest.param(True, True, marks=pytest.mark.slow)])
def test_per_layer_path_computes_what_the_scanned_module_computes(monkeypatch, tie, remat):
    config = _config(3, tie=tie, remat=remat)
    params = decoder.init(jax.random.key(1), config)
    params = jax.tree.map(lambda x: (x.astype(jnp.float32) * 10).astype(x.dtype), params)
    ids = np.random.default_rng(0).integers(0, 999, (2, 12))
    monkeypatch.setattr(decoder, "_HEAD_CHUNK_BYTES", 4 * 128 * 300)  # 3 vocabulary chunks and a rest of 100

    def run():  # traced afresh each time, so the monkeypatched switch applies
        hidden = jax.jit(lambda p: decoder.apply(p, ids, config=config, return_hidden=True))(params)
        rows = jax.jit(lambda p, h: decoder.head(p, config, h[:, 3:7]))(params, hidden)  # rows, as the sampler reads
        logits = jax.jit(lambda p: decoder.apply(p, ids, config=config))(params)
        if not remat:
            return hidden, rows, logits, []
        loss = jax.jit(jax.grad(lambda p: decoder.apply(p, ids, config=config, return_hidden=True).mean()))
        return hidden, rows, logits, jax.tree.leaves(loss(params))

    hidden, rows, logits, grads = run()
    monkeypatch.setattr(decoder, "_upcasts_whole_weights", lambda config: False)
    want_hidden, want_rows, want_logits, want_grads = run()
    np.testing.assert_array_equal(hidden, want_hidden)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    # The head rounds its input to bf16 as stored, so rows agree with the full forward exactly; XLA's
    # own bf16 head keeps the float32 norm output where it can, a few bf16 steps away.
    np.testing.assert_array_equal(rows, logits[:, 3:7])
    np.testing.assert_allclose(rows, want_rows, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(logits, want_logits, rtol=2e-2, atol=2e-2)
