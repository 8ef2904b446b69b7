"""Row packing: the head and statistics on only the rows a step reads equal the full [B, L, V] computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.ops.token_stats import xla_token_stats
from dlm_jax.sampling import GenerateConfig
from dlm_jax.sampling.rows import CONFIDENCE, feeding_rows, guided_logits, model_hidden, row_buckets, row_stats
from dlm_jax.sampling.stats import position_stats


def _config(**kw):
    base = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    return ModelConfig(**{**base, "mask_token_id": 96, **kw})


@pytest.fixture(scope="module")
def untied():
    config = _config()
    return config, decoder.init(jax.random.key(3), config)


def test_row_buckets_and_feeding_rows_by_hand():
    assert row_buckets(576) == (72, 144, 216, 288, 360, 432, 504, 576)
    assert row_buckets(20) == (8, 16, 20)
    assert row_buckets(5) == (5,)
    positions = jnp.array([[False, True, False, True, True], [True, False, False, False, False]])
    assert feeding_rows(positions, False).tolist() == positions.tolist()
    # shifted: position i reads row i - 1, position 0 its own row
    assert feeding_rows(positions, True).tolist() == [
        [True, False, True, True, False],
        [True, False, False, False, False],
    ]
    assert feeding_rows(jnp.array([[True]]), True).tolist() == [[True]]


@pytest.mark.parametrize("tied", [False, True])
def test_head_on_hidden_states_is_the_decoders_forward(untied, tied):
    config = _config(tie_embeddings=True) if tied else untied[0]
    params = decoder.init(jax.random.key(1), config) if tied else untied[1]
    ids = jax.random.randint(jax.random.key(2), (2, 11), 0, 96)
    hidden, logits = jax.jit(
        lambda ids: (
            decoder.apply(params, ids, config=config, return_hidden=True),
            decoder.apply(params, ids, config=config),
        )
    )(ids)
    np.testing.assert_array_equal(jax.jit(lambda h: decoder.head(params, config, h))(hidden), logits)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gen", "density"),
    [
        (GenerateConfig(max_new_tokens=8, steps=8, alg="entropy"), 0.1),
        (GenerateConfig(max_new_tokens=8, steps=8, alg="maskgit_plus", temperature=0.8), 0.5),
        (GenerateConfig(max_new_tokens=8, steps=8, alg="low_confidence", temperature=0.7, cfg_scale=1.5), 0.3),
        (GenerateConfig(max_new_tokens=8, steps=8, alg="topk_margin", temperature=1.1, top_p=0.9), 0.0),
    ],
)
def test_row_stats_on_packed_rows_equal_the_full_computation(untied, gen, density):
    """Greedy and sampled tokens (noise numbered by row), CFG, top-p, and an empty set of rows."""
    config, params = untied
    x = jax.random.randint(jax.random.key(4), (3, 20), 0, 97)  # 60 rows: buckets 8 .. 60
    prompt = jnp.arange(20) < 6
    prompt = jnp.broadcast_to(prompt, x.shape)
    needed = jax.random.uniform(jax.random.key(5), x.shape) < density
    key = jax.random.key(6)

    @jax.jit
    def packed_and_full(x, needed):
        hidden = model_hidden(params, config, gen, x, None, prompt)
        logits = guided_logits(params, config, gen, hidden)  # the head on every row
        return row_stats(params, config, gen, hidden, needed, key), position_stats(logits, gen, key)

    got, want = packed_and_full(x, needed)
    sel = np.asarray(needed)
    assert sel.sum() <= row_buckets(sel.size)[-2]  # a packed branch runs, not the full one
    np.testing.assert_array_equal(np.asarray(got.token)[sel], np.asarray(want.token)[sel])
    read = CONFIDENCE.get(gen.alg, "prob")  # the one confidence the rule reads; the others are not computed
    got_read, want_read = np.asarray(getattr(got, read))[sel], np.asarray(getattr(want, read))[sel]
    np.testing.assert_allclose(got_read, want_read, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_rows_number_the_sampling_noise():
    """A gathered subset of rows draws exactly what those rows draw in the full set (XLA and Pallas)."""
    from dlm_jax.ops.pallas.token_stats import pallas_token_stats

    x = jax.random.normal(jax.random.key(7), (24, 300)) * 3
    index = jnp.array([21, 3, 4, 17, 9, 0, 11, 23, 2])
    key = jax.random.key(8)
    full = xla_token_stats(x, temperature=0.9, key=key).token[index]
    sub = xla_token_stats(x[index], temperature=0.9, key=key, rows=index).token
    kernel = pallas_token_stats(x[index], temperature=0.9, key=key, rows=index, block_rows=8, block_vocab=128).token
    np.testing.assert_array_equal(sub, full)
    np.testing.assert_array_equal(kernel, full)
    unnumbered = xla_token_stats(x[index], temperature=0.9, key=key).token
    assert not np.array_equal(unnumbered, full)  # without the numbers the draws differ


@pytest.fixture(scope="module")
def models(data_dir):
    parity = data_dir / "parity"
    return {
        "dream": DiffusionLM.from_pretrained(parity / "dream" / "model"),
        "llada": DiffusionLM.from_pretrained(parity / "llada" / "model", logit_shift=False),
        "diffullama": DiffusionLM.from_pretrained(parity / "diffullama" / "model"),
    }


def _identity_hook(step, x, logits):
    return x


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("dream", dict(max_new_tokens=24, steps=12, alg="entropy")),
        ("dream", dict(max_new_tokens=24, steps=6, alg="topk_margin", temperature=0.9, top_k=20, seed=2)),
        ("llada", dict(max_new_tokens=24, steps=12, block_length=8, remasking="low_confidence", temperature=0.5)),
        ("diffullama", dict(steps=6, alg="diffullama")),
    ],
)
def test_generate_with_packed_rows_equals_the_full_path(models, family, kwargs):
    """A token hook forces the full [B, L, V] path; without hooks the sampler packs rows. Same canvas every step."""
    model = models[family]
    ids = np.random.default_rng(9).integers(10, 190, size=(2, 14))
    if family == "diffullama":
        src = np.zeros(ids.shape, bool)
        src[:, :4] = True
        kwargs = {**kwargs, "src_mask": src}
    packed = model.diffusion_generate(ids, output_history=True, **kwargs)
    full = model.diffusion_generate(ids, output_history=True, generation_tokens_hook_func=_identity_hook, **kwargs)
    np.testing.assert_array_equal(packed.history, full.history)
    np.testing.assert_array_equal(packed.sequences, full.sequences)
    np.testing.assert_array_equal(packed.nfe, full.nfe)
