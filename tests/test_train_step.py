"""Train step, optimiser, config and scaling helpers: hand-checked numbers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.training import scaling
from dlm_jax.training.config import TrainConfig, experiment_from_dict, load_experiment
from dlm_jax.training.optimizer import decay_mask, make_optimizer, make_schedule
from dlm_jax.training.state import create_train_state
from dlm_jax.training.step import make_train_step

TINY = ModelConfig(vocab_size=17, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, mask_token_id=16)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda k: decoder.init(k, TINY))(jax.random.key(0))


def test_schedule_warmup_then_cosine_to_min_lr():
    sched = make_schedule(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110))
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(60)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-5)  # half-way down the cosine
    assert float(sched(110)) == pytest.approx(1e-4)


def test_weight_decay_skips_norms_and_biases(params):
    mask = decay_mask(params)
    assert mask["layers"]["attn_norm"]["scale"] is False and mask["final_norm"]["scale"] is False
    assert mask["layers"]["attn"]["q"]["kernel"] is True and mask["embed"]["embedding"] is True
    # Zero gradients: AdamW moves only the decayed leaves, by lr * wd * w.
    tc = TrainConfig(lr=0.1, min_lr=0.1, warmup_steps=0, weight_decay=0.5, clip=0.0)
    opt = make_optimizer(tc)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(updates["embed"]["embedding"], -0.1 * 0.5 * params["embed"]["embedding"], rtol=1e-6)
    assert not np.any(np.asarray(updates["final_norm"]["scale"]))


@pytest.mark.slow
def test_grad_accumulation_matches_one_big_batch(params):
    # The AR objective is deterministic, so 2 micro-batches of 2 must equal one batch of 4.
    ids = jax.random.randint(jax.random.key(1), (4, 8), 0, 16)
    out = []
    for accum in (1, 2):
        tc = TrainConfig(objective="ar", batch_size=4, seq_len=8, grad_accum=accum, lr=1e-2, warmup_steps=0)
        state = create_train_state(params, make_optimizer(tc), 0)
        out.append(jax.jit(make_train_step(TINY, tc))(state, {"input_ids": ids}))
    (s1, m1), (s2, m2) = out
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-6)
    assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-5)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
    assert int(s1.step) == int(s2.step) == 1


def test_the_step_refuses_a_batch_of_the_wrong_shape_or_dtype_while_tracing(params):
    tc = TrainConfig(objective="mdm", batch_size=2, seq_len=8)
    step = jax.jit(make_train_step(TINY, tc))
    state = create_train_state(params, make_optimizer(tc), 0)
    ids = jnp.zeros((2, 8), jnp.int32)
    bad = {
        "rank": {"input_ids": ids[0]},
        "shape": {"input_ids": ids, "attention_mask": jnp.ones((2, 7), jnp.int32)},
        "type": {"input_ids": ids.astype(jnp.float32)},
    }
    for what, batch in bad.items():
        with pytest.raises(AssertionError, match=f"assert_{'equal_shape' if what == 'shape' else what}"):
            jax.eval_shape(step, state, batch)


def test_bf16_compute_keeps_fp32_master_params(params):
    cfg = TINY.replace(compute_dtype="bfloat16")
    tc = TrainConfig(objective="mdm", batch_size=2, seq_len=8, lr=1e-2, warmup_steps=0)
    state = create_train_state(params, make_optimizer(tc), 0)
    ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)
    new, m = jax.jit(make_train_step(cfg, tc))(state, {"input_ids": ids})
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
    assert np.isfinite(float(m["loss"])) and float(m["lr"]) == pytest.approx(1e-2)
    assert not np.array_equal(np.asarray(new.rng), np.asarray(state.rng))  # rng advances every step


def test_unknown_config_key_and_overrides(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key train.learning_rate; known train keys: adam_eps, "):
        experiment_from_dict({"model": "smdm_6m", "train": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="unknown section 'trian'"):
        experiment_from_dict({"model": "smdm_6m"}, ["trian.lr=1"])
    with pytest.raises(ValueError, match=r"train.objective='bert' is not one of"):
        experiment_from_dict({"model": "smdm_6m"}, ["train.objective=bert"])
    cfg = experiment_from_dict({"model": "smdm_6m"}, ["train.lr=1e-3", "model.num_layers=2", "data.kind=sudoku"])
    assert (cfg.train.lr, cfg.model.num_layers, cfg.data.kind, cfg.model.hidden_size) == (1e-3, 2, "sudoku", 256)
    with pytest.raises(FileNotFoundError, match="--config .*missing.yaml: no such file"):
        load_experiment(tmp_path / "missing.yaml")


def test_flops_budget_gives_steps_from_6nd():
    m = ModelConfig.from_preset("smdm_6m")
    n = m.non_embedding_params()
    tc = TrainConfig(flops=6 * n * 8 * 128 * 250, batch_size=8, seq_len=128)
    out = scaling.apply_flops_budget(tc, m)
    assert out.max_steps == 250 and out.warmup_steps == 25  # max(100, 1%) capped at 10% of a tiny run
    big = scaling.apply_flops_budget(TrainConfig(flops=6 * n * 8 * 128 * 50_000, batch_size=8, seq_len=128), m)
    assert (big.max_steps, big.warmup_steps) == (50_000, 500)
    fit = scaling.fit_power_law([1e15, 1e16, 1e17], [4.0 * 1e15**-0.05, 4.0 * 1e16**-0.05, 4.0 * 1e17**-0.05])
    assert fit.b == pytest.approx(-0.05) and fit.a == pytest.approx(4.0, rel=1e-6)
