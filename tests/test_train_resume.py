"""Checkpoints: resume is exact (params and loss curve), other shapes and broken states are refused."""

import chex
import jax
import jax.numpy as jnp
import pytest

from dlm_jax.training.checkpoint import Checkpointer
from dlm_jax.training.config import experiment_from_dict
from dlm_jax.training.metrics_log import read_metrics
from dlm_jax.training.state import TrainState
from dlm_jax.training.trainer import Trainer

N = 3


def _exp(out_dir, max_steps, **model):
    return experiment_from_dict({
        "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, **model},
        "train": {"objective": "mdm", "batch_size": 8, "seq_len": 16, "max_steps": max_steps, "lr": 1e-2,
                  "warmup_steps": 1, "log_every": 1, "eval_mc_samples": 1, "eval_batches": 1, "ssl_ratio": 0.5},
        "data": {"kind": "reverse_curse", "pack": False, "options": {"num_facts": 12}},
        "checkpoint": {"every": N, "async_save": True},
        "logging": {"out_dir": str(out_dir), "progress": False},
    })


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """The three trainers compile identical programs: share them through a temporary persistent cache."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.mark.slow
def test_resume_is_exact_and_other_shapes_are_refused(tmp_path, compile_cache):
    root = tmp_path
    straight = Trainer(_exp(root / "straight", 2 * N))
    full = straight.run()
    straight.close()
    # First half: SIGTERM arrives during step N (as a TPU preemption would): the loop checkpoints and stops.
    first = Trainer(_exp(root / "split", 2 * N))
    inner = first.step_fn

    def step_then_preempt(state, batch):
        out = inner(state, batch)
        if int(out[0].step) == N:
            first._on_sigterm(15, None)
        return out

    first.step_fn = step_then_preempt
    half = first.run()
    first.close()
    # A fresh trainer ("new process") resumes from disk.
    second = Trainer(_exp(root / "split", 2 * N))
    assert half.interrupted and int(half.state.step) == N and int(second.state.step) == N
    rest = second.run()
    second.close()
    chex.assert_trees_all_equal(full.state.params, rest.state.params)
    curve = lambda path: [(r["step"], r["loss"]) for r in read_metrics(path) if "loss" in r]  # noqa: E731
    straight_curve, split_curve = curve(root / "straight" / "metrics.jsonl"), curve(root / "split" / "metrics.jsonl")
    assert [s for s, _ in split_curve] == list(range(1, 2 * N + 1))
    assert straight_curve == split_curve  # bit-identical losses, step by step
    assert full.final_val == rest.final_val
    with pytest.raises(ValueError, match="another model shape .*hidden_size: checkpoint 16 vs config 32"):
        Trainer(_exp(root / "split", 2 * N, hidden_size=32, intermediate_size=32))


def test_non_finite_state_is_never_saved(tmp_path):
    state = TrainState(step=jnp.array(1, jnp.int32), params={"w": jnp.ones((2, 2))}, opt_state=(), rng=jnp.zeros(2))
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3, every=1, async_save=False)
    assert ckpt.save(state, data_state={"next_index": 1}, meta={})
    bad = state.replace(step=jnp.array(2, jnp.int32), params={"w": jnp.full((2, 2), jnp.nan)})
    with pytest.raises(FloatingPointError, match="refusing to checkpoint step 2.*step 1, is kept"):
        ckpt.save(bad, data_state={}, meta={})
    assert ckpt.latest_step() == 1
    assert not ckpt.save(state, data_state={}, meta={})  # an existing step is never rewritten
    ckpt.close()
