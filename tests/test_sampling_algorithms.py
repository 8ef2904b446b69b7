"""Behaviour of each sampler mode: Dream filters/origin/alg_temp, LLaDA blocks/random/CFG, DiffuLLaMA NFE, hooks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.api import DiffusionLM
from dlm_jax.models import decoder
from dlm_jax.ops.token_stats import top_k_filter, top_p_filter
from dlm_jax.sampling import GenerateConfig, loop, rows
from dlm_jax.sampling.algorithms import top_count
from dlm_jax.sampling.schedules import dream_transfer_fractions, llada_transfer_count
from dlm_jax.sampling.stats import position_stats

MASK, EOS = 299, 296


@pytest.fixture(scope="module")
def dream(data_dir):
    return DiffusionLM.from_pretrained(data_dir / "parity" / "dream" / "model")


def _prompts(batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, 290, size=(batch, length))


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0, "steps": 1}, "max_new_tokens"),
        ({"max_new_tokens": 8, "steps": 0}, "steps"),
        ({"max_new_tokens": 8, "steps": 8, "alg": "greedy"}, "alg"),
        ({"max_new_tokens": 8, "steps": 4, "alg": "low_confidence", "block_length": 3}, "block_length"),
        ({"max_new_tokens": 8, "steps": 9, "alg": "low_confidence"}, "steps"),
        ({"max_new_tokens": 8, "steps": 3, "alg": "low_confidence", "block_length": 4}, "steps"),
        ({"max_new_tokens": 8, "steps": 8, "top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 8, "steps": 8, "top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 8, "steps": 8, "top_k": 0}, "top_k"),
        ({"max_new_tokens": 8, "steps": 8, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 8, "steps": 8, "eps": 1.0}, "eps"),
        ({"max_new_tokens": 8, "steps": 8, "alg": "diffullama", "block_length": 4}, "block_length"),
    ],
)
def test_generate_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerateConfig(**kwargs)


def test_diffusion_generate_rejects_bad_calls(dream):
    ids = _prompts(1, 4)
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        dream.diffusion_generate(_prompts(1, 250), max_new_tokens=10, steps=10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dream.diffusion_generate(ids, max_new_tokens=0, steps=1)
    with pytest.raises(ValueError, match="either alg"):
        dream.diffusion_generate(ids, max_new_tokens=4, alg="entropy", remasking="random")
    with pytest.raises(ValueError, match="attention_mask shape"):
        dream.diffusion_generate(ids, np.ones((1, 3)), max_new_tokens=4)
    with pytest.raises(ValueError, match="src_mask"):
        dream.diffusion_generate(ids, max_new_tokens=4, src_mask=np.ones_like(ids))
    with pytest.raises(ValueError, match="until"):
        dream.diffusion_generate(ids, max_new_tokens=4, until=["\n"])


# ---- schedules and selection helpers ---------------------------------------------------------


def test_llada_transfer_count_is_get_num_transfer_tokens():
    for steps in range(1, 7):
        for n in range(0, 21):
            expected = [n // steps + (1 if j < n % steps else 0) for j in range(steps)]
            got = [int(llada_transfer_count(jnp.array([n]), jnp.int32(j), steps)[0]) for j in range(steps)]
            assert got == expected and sum(got) == n


def test_top_count_picks_the_highest_scores_per_row():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 17)).astype(np.float32)
    counts = np.array([0, 1, 5, 16, 17])
    got = np.asarray(top_count(jnp.asarray(scores), jnp.asarray(counts)))
    for row, k in enumerate(counts):
        expected = np.zeros(17, bool)
        expected[np.argsort(-scores[row])[:k]] = True
        np.testing.assert_array_equal(got[row], expected)


def test_top_p_top_k_filters_match_dream():
    ref = pytest.importorskip("tests.torch_reference")
    torch = ref.torch
    logits = np.random.default_rng(1).normal(size=(6, 40)).astype(np.float32) * 3
    for p in (0.1, 0.5, 0.9, 1.0):
        np.testing.assert_array_equal(
            np.asarray(top_p_filter(jnp.asarray(logits), p)), ref.top_p_logits(torch.tensor(logits), p).numpy()
        )
    for k in (1, 3, 40, 100):
        np.testing.assert_array_equal(
            np.asarray(top_k_filter(jnp.asarray(logits), k)), ref.top_k_logits(torch.tensor(logits), k).numpy()
        )


def test_llada_sampling_scores_with_the_untempered_softmax():
    logits = jnp.log(jnp.array([[[0.5, 0.3, 0.2]]]))
    gen = GenerateConfig(max_new_tokens=4, steps=4, alg="low_confidence", temperature=2.0)
    keys = jax.random.split(jax.random.key(0), 400)
    stats = jax.jit(jax.vmap(lambda k: position_stats(logits, gen, k)))(keys)
    tokens = np.asarray(stats.token[:, 0, 0])
    np.testing.assert_allclose(np.asarray(stats.prob[:, 0, 0]), np.array([0.5, 0.3, 0.2])[tokens], rtol=1e-5)
    # T=2 flattens the distribution: every token shows up, the likeliest most often.
    counts = np.bincount(tokens, minlength=3)
    assert counts.min() > 20 and counts.argmax() == 0


# ---- Dream against a PyTorch port of its step loop ---------------------------------------------


@pytest.mark.parametrize(("alg", "top_p", "top_k"), [("maskgit_plus", 0.3, None), ("entropy", None, 5)])
def test_dream_top_p_top_k_match_pytorch_port(dream, data_dir, alg, top_p, top_k):
    ref = pytest.importorskip("tests.torch_reference")
    ids = _prompts(2, 5, seed=3)
    out = dream.diffusion_generate(ids, max_new_tokens=8, steps=4, alg=alg, top_p=top_p, top_k=top_k)
    net = ref.qwen2_from_folder(data_dir / "parity" / "dream" / "model")
    expected = ref.dream_generate(net, ids, MASK, 8, 4, alg, top_p, top_k)
    np.testing.assert_array_equal(out.sequences, expected)


# ---- Dream: origin and alg_temp ---------------------------------------------------------------


@pytest.mark.slow
def test_origin_reveals_each_mask_with_probability_one_minus_s_over_t(dream):
    steps, new = 4, 64
    out = dream.diffusion_generate(_prompts(4, 3), max_new_tokens=new, steps=steps, alg="origin", output_history=True)
    masks = (out.history[:, :, 3:] == MASK).sum(axis=(1, 2))
    assert masks[-1] == 0 and np.all(np.diff(masks) <= 0)
    p0 = float(dream_transfer_fractions(steps, 1e-3)[0])  # ~0.25
    n = 4 * new
    revealed = n - masks[0]
    assert abs(revealed - n * p0) < 4 * np.sqrt(n * p0 * (1 - p0))
    again = dream.diffusion_generate(_prompts(4, 3), max_new_tokens=new, steps=steps, alg="origin", seed=1)
    assert not np.array_equal(again.sequences, out.sequences)


@pytest.mark.slow
def test_alg_temp_samples_positions_but_keeps_dream_counts(dream):
    ids = _prompts(2, 3, seed=5)
    kw = dict(max_new_tokens=12, steps=4, alg="maskgit_plus", output_history=True)
    greedy = dream.diffusion_generate(ids, alg_temp=0.0, **kw)
    hot = [dream.diffusion_generate(ids, alg_temp=5.0, seed=s, **kw) for s in range(2)]
    counts = lambda out: (out.history == MASK).sum(axis=2)  # noqa: E731
    for out in hot:
        np.testing.assert_array_equal(counts(out), counts(greedy))
        assert (out.sequences != MASK).all()
    assert not np.array_equal(hot[0].history, hot[1].history)
    cold = dream.diffusion_generate(ids, alg_temp=1e-9, seed=7, **kw)
    np.testing.assert_array_equal(cold.history, greedy.history)


# ---- Dream batches with unequal mask counts ---------------------------------------------------


def test_per_row_count_finishes_rows_that_the_batch_mean_leaves_masked(dream):
    ids = _prompts(2, 8, seed=2)
    ids[0, [1, 2, 3, 4, 5, 6]] = MASK  # row 0: 6 infill masks + 4 new; row 1: 4 new
    mean = dream.diffusion_generate(ids, max_new_tokens=4, steps=4, alg="entropy")
    per_row = dream.diffusion_generate(ids, max_new_tokens=4, steps=4, alg="entropy", per_row_count=True)
    assert (per_row.sequences != MASK).all()
    # Dream's count is int(mean * ...): 7 over all steps, so row 0 (10 masks) keeps 3, row 1 is done.
    assert (mean.sequences[0] == MASK).sum() == 3 and (mean.sequences[1] != MASK).all()
    np.testing.assert_array_equal(mean.sequences[:, :1], ids[:, :1])  # nothing outside the masks moved


# ---- hooks and forbidden ids ------------------------------------------------------------------


def _favour(boosts):
    ids, values = jnp.array(list(boosts)), jnp.array(list(boosts.values()))

    def hook(step, x, logits):
        return logits.at[..., ids].add(values)

    return hook


def test_logits_hook_forbid_mask_and_suppress_eos(dream):
    ids = _prompts(2, 4, seed=4)
    hook = _favour({MASK: 100.0, EOS: 50.0})
    kw = dict(max_new_tokens=6, steps=3, alg="maskgit_plus", generation_logits_hook_func=hook)
    free = dream.diffusion_generate(ids, **kw)
    assert (free.sequences[:, 4:] == MASK).all()  # Dream: a predicted mask stays a mask
    safe = dream.diffusion_generate(ids, forbid_mask_token=True, suppress_eos=True, vocab_limit=290, **kw)
    gen = safe.sequences[:, 4:]
    assert (gen != MASK).all() and (gen != EOS).all() and (gen < 290).all()


def test_token_hook_forces_an_ending_and_stops_completions_at_eos(dream):
    def force_eos(step, x, logits):
        return x.at[:, 7].set(EOS)

    out = dream.diffusion_generate(
        _prompts(2, 4), max_new_tokens=6, steps=3, alg="entropy", generation_tokens_hook_func=force_eos
    )
    assert (out.sequences[:, 7] == EOS).all()
    assert [len(c) for c in out.completions] == [3, 3]
    np.testing.assert_array_equal(np.stack(out.completions), out.sequences[:, 4:7])


def test_repeated_calls_reuse_the_compiled_sampler(dream):
    ids = _prompts(1, 4)
    dream.diffusion_generate(ids, max_new_tokens=6, steps=3, alg="topk_margin")
    size = loop._generate._cache_size()
    second = dream.diffusion_generate(ids + 1, max_new_tokens=6, steps=3, alg="topk_margin", seed=3)
    assert loop._generate._cache_size() == size
    assert second.sequences.shape == (1, 10)


# ---- LLaDA: blocks, random remasking, CFG ------------------------------------------------------


@pytest.fixture(scope="module")
def llada(data_dir):
    return DiffusionLM.from_pretrained(data_dir / "parity" / "llada" / "model", logit_shift=False)


def test_llada_blocks_decode_left_to_right_with_the_llada_budget(llada):
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 4))
    outs = [
        llada.diffusion_generate(
            ids, max_new_tokens=8, steps=6, block_length=4, remasking="random", seed=s, output_history=True
        )
        for s in range(2)
    ]
    for out in outs:
        masked = out.history[:, :, 4:] == 259
        per_block = masked.reshape(6, 2, 2, 4).sum(-1)  # [step, batch, block]
        # 3 steps per block of 4 masks: 2, 1, 1 revealed; the second block waits for the first.
        np.testing.assert_array_equal(per_block[:, 0], [[2, 4], [1, 4], [0, 4], [0, 2], [0, 1], [0, 0]])
        np.testing.assert_array_equal(per_block[:, 1], per_block[:, 0])
    assert not np.array_equal(outs[0].history, outs[1].history)


def test_cfg_mixes_both_branches_of_one_batched_forward(llada):
    cfg, params = llada.config, llada.params
    x = jnp.array([[5, 6, 7, 259, 259, 259]])
    prompt = x != 259
    gen = GenerateConfig(max_new_tokens=3, steps=3, alg="low_confidence", cfg_scale=1.5)
    got = jax.jit(lambda p: rows.guided_logits(p, cfg, gen, rows.model_hidden(p, cfg, gen, x, None, prompt)))(params)
    forward = jax.jit(lambda p, ids: decoder.apply(p, ids, config=cfg))
    cond, un = forward(params, x), forward(params, jnp.where(prompt, 259, x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(un + 2.5 * (cond - un)), rtol=1e-5, atol=1e-5)


# ---- DiffuLLaMA: per-row NFE and early exit ---------------------------------------------------


def test_diffullama_counts_forward_passes_per_row_and_stops_when_done(data_dir):
    model = DiffusionLM.from_pretrained(data_dir / "parity" / "diffullama" / "model")
    ids = np.random.default_rng(1).integers(10, 200, size=(2, 10))
    src = np.zeros((2, 10), bool)
    src[0, :8] = True  # 2 maskable positions
    src[1, :7] = True  # 3 maskable positions
    steps = 8
    out = model.diffusion_generate(ids, src_mask=src, steps=steps, alg="diffullama", output_history=True)
    # A row needs another pass after step i while floor(n * (T-1-i)/T) > 0 positions stay masked.
    expected = [1 + sum(int(n * (steps - 1 - i) / steps) > 0 for i in range(steps)) for n in (2, 3)]
    assert out.nfe.tolist() == expected == [5, 6]
    np.testing.assert_array_equal(out.sequences[src], ids[src])
    assert (out.sequences != 7).all()
    # The loop stopped after 6 steps; the remaining history repeats the final canvas.
    np.testing.assert_array_equal(out.history[5:], np.broadcast_to(out.sequences, (3, 2, 10)))
    assert (out.history[4] == 7).any()


@pytest.mark.parametrize("shifted", [True, False])
def test_diffullama_position_zero_is_kept_only_on_shifted_models(data_dir, shifted):
    """A shifted model has no prediction for position 0 (DiffuLLaMA keeps x[:, 0]); an unshifted one decodes it."""
    model = DiffusionLM.from_pretrained(data_dir / "parity" / "diffullama" / "model", logit_shift=shifted)
    mask_id = model.config.mask_token_id
    src = np.zeros((2, 9), bool)
    src[:, 3:6] = True  # position 0 stays maskable
    ids = np.random.default_rng(4).integers(10, 200, size=(2, 9))
    predicted = model.logits(np.where(src, ids, mask_id)).argmax(-1)  # steps=1: one forward decodes everything
    ids[:, 0] = np.where(predicted[:, 0] == 11, 12, 11)  # an original token the model does not predict there
    out = model.diffusion_generate(ids, src_mask=src, steps=1, alg="diffullama").sequences
    expected = np.concatenate([ids[:, :1], predicted[:, :-1]], axis=1) if shifted else predicted
    expected = np.where(src, ids, expected)
    np.testing.assert_array_equal(out, expected)
    assert (out[:, 0] == ids[:, 0]).all() == shifted
