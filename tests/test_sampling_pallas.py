"""The sampler's per-position reduction through the fused Pallas token_stats kernel gives the XLA path's tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.sampling import GenerateConfig
from dlm_jax.sampling.stats import position_stats


@pytest.mark.slow
@pytest.mark.parametrize(
    ("alg", "temperature", "filters"),
    [("entropy", 0.0, {"top_k": None}), ("maskgit_plus", 0.7, {})],  # the second: Dream's default top_k=50
)
def test_pallas_sampling_impl_matches_xla_on_the_dream_model(data_dir, alg, temperature, filters):
    pytest.importorskip("dlm_jax.ops.pallas.token_stats")
    folder = data_dir / "parity" / "dream" / "model"
    xla = DiffusionLM.from_pretrained(folder)
    pallas = DiffusionLM.from_pretrained(folder, sampling_impl="pallas")
    ids = np.random.default_rng(0).integers(0, 290, size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    kw = dict(max_new_tokens=8, steps=4, alg=alg, temperature=temperature, output_history=True, seed=3, **filters)
    expected = xla.diffusion_generate(ids, mask, **kw)
    got = pallas.diffusion_generate(ids, mask, **kw)
    np.testing.assert_array_equal(got.history, expected.history)
    np.testing.assert_array_equal(got.sequences, expected.sequences)


def test_pallas_impl_runs_the_kernel_with_top_p_and_top_k():
    """No fallback to XLA under top-p/top-k: the traced reduction holds the kernel (numbers: test_ops_token_stats)."""
    logits = jnp.zeros((2, 3, 260))
    for gen in (
        GenerateConfig(max_new_tokens=4, steps=4, alg="entropy", top_k=50),
        GenerateConfig(max_new_tokens=4, steps=4, alg="maskgit_plus", temperature=0.5, top_p=0.9, top_k=20),
    ):
        for impl, kernel in (("pallas", True), ("xla", False)):
            traced = jax.make_jaxpr(lambda x, gen=gen, impl=impl: position_stats(x, gen, jax.random.key(1), impl=impl))
            assert ("pallas_call" in str(traced(logits))) == kernel
