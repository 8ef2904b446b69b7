"""The tiny Dream checkpoint with the Pallas kernels (interpret mode): parity logits and parity tokens."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import DiffusionLM

REL = 1e-4  # relative to the largest |logit|, as the foundation's XLA parity test


@pytest.fixture(scope="module")
def dream(data_dir):
    root = data_dir / "parity" / "dream"
    vectors = np.load(root / "vectors.npz")
    cases = {c["name"]: c for c in json.loads((root / "cases.json").read_text())["cases"]}
    return root / "model", vectors, cases


@pytest.mark.parametrize("case", ["logits_nopad", "logits_leftpad"])
def test_pallas_logits_match_parity_vectors_and_xla(dream, case):
    model_dir, vectors, _ = dream
    pallas = DiffusionLM.from_pretrained(model_dir, attention_impl="pallas")
    xla = DiffusionLM.from_pretrained(model_dir)
    assert pallas.config.attention_impl == "pallas"
    ids = jnp.asarray(vectors[f"{case}.input_ids"])
    mask_key = f"{case}.attention_mask"
    mask = jnp.asarray(vectors[mask_key]) if mask_key in vectors else None
    got = np.asarray(pallas.logits(ids, mask))
    valid = np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    assert np.isfinite(got).all()
    for want in (vectors[f"{case}.logits"], np.asarray(xla.logits(ids, mask))):
        scale = np.abs(want[valid]).max()
        assert np.abs(got[valid] - want[valid]).max() <= REL * scale


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gen_topk_margin", "gen_entropy_leftpad"])
def test_pallas_sampler_reproduces_dream_tokens(dream, case):
    model_dir, vectors, cases = dream
    spec = cases[case]
    model = DiffusionLM.from_pretrained(model_dir, attention_impl="pallas", sampling_impl="pallas")
    mask = vectors[f"{case}.attention_mask"]
    out = model.diffusion_generate(
        jnp.asarray(vectors[f"{case}.input_ids"]),
        attention_mask=jnp.asarray(mask) if (mask == 0).any() else None,
        max_new_tokens=spec["max_new_tokens"],
        steps=spec["steps"],
        alg=spec["alg"],
        temperature=0.0,
        alg_temp=0.0,
        eps=spec["eps"],
        output_history=True,
    )
    np.testing.assert_array_equal(np.asarray(out.sequences), vectors[f"{case}.sequences"])
    np.testing.assert_array_equal(np.asarray(out.history), vectors[f"{case}.history"])
