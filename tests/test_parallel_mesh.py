"""Sharded train step, eval step and sampler on 8 virtual CPU devices match one device; orbax reshards."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.parallel import MeshConfig, Partitioner, put_global, shard_eval_step, shard_sampler, shard_train_step
from dlm_jax.sampling import GenerateConfig, generate
from dlm_jax.training.checkpoint import Checkpointer
from dlm_jax.training.config import TrainConfig
from dlm_jax.training.optimizer import make_optimizer
from dlm_jax.training.state import create_train_state
from dlm_jax.training.step import make_eval_step, make_train_step

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]
CFG = ModelConfig(
    family="dream",
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
    qkv_bias=True,
    logit_shift=True,
    mask_token_id=63,
    max_position_embeddings=64,
)
TC = TrainConfig(objective="mdm", lr=1e-2, warmup_steps=0, max_steps=10, batch_size=8, seq_len=16)


@functools.lru_cache(maxsize=1)
def setup():
    """Host state, two batches, and the one-device reference for two steps (computed once per worker)."""
    optimizer = make_optimizer(TC)
    make_state = jax.jit(lambda key: create_train_state(decoder.init(key, CFG), optimizer, jax.random.key(7)))
    host = jax.device_get(make_state(jax.random.key(0)))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        ids = rng.integers(0, 63, size=(8, 16)).astype(np.int32)
        mask = np.ones((8, 16), np.int32)
        mask[:3, :4] = 0  # left padding on three rows
        batches.append({"input_ids": ids, "attention_mask": mask})
    step = make_train_step(CFG, TC, optimizer)
    ref_step = jax.jit(step)
    s1, m1 = ref_step(host, batches[0])
    s2, m2 = ref_step(s1, batches[1])
    return step, host, batches, jax.device_get((s1, m1, s2, m2))


@functools.cache
def sharded(shape):
    step, host, batches, _ = setup()
    part = Partitioner.create(MeshConfig(*shape))
    abstract_state = jax.eval_shape(lambda: host)
    abstract_batch = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, batches[0]))
    return shard_train_step(step, abstract_state, abstract_batch, CFG, part)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_train_step_matches_one_device(shape):
    _, host, batches, (ref_state, ref_metrics, _, _) = setup()
    ts = sharded(shape)
    state = put_global(host, ts.state_shardings)
    new, metrics = ts(state, ts.shard_batch(batches[0]))
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_metrics["grad_norm"]), rtol=1e-4)
    assert int(new.step) == 1
    chex.assert_trees_all_close(new.params, ref_state.params, atol=2e-5, rtol=1e-4)
    chex.assert_trees_all_close(new.opt_state, ref_state.opt_state, atol=2e-5, rtol=1e-4)
    # The state really is distributed as the rules say: q kernel [layers, embed, heads, head_dim].
    data, fsdp, tensor = shape
    q = new.params["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.shard_shape(q.shape) == (2, 32 // fsdp, 4 // tensor, 8)
    mu = new.opt_state[1][0].mu["layers"]["mlp"]["up"]["kernel"]
    assert mu.sharding.shard_shape(mu.shape) == (2, 32 // fsdp, 64 // tensor)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sampler_matches_one_device(shape):
    _, host, batches, _ = setup()
    gen = GenerateConfig(max_new_tokens=4, steps=2, alg="maskgit_plus")
    inputs = {"input_ids": batches[0]["input_ids"][:, :6], "attention_mask": batches[0]["attention_mask"][:, :6]}
    key = jax.random.key(3)
    ref = generate(host.params, CFG, inputs["input_ids"], inputs["attention_mask"], gen, key).sequences

    def sample(p, x, rng):
        return generate(p, CFG, x["input_ids"], x["attention_mask"], gen, rng).sequences

    part = Partitioner.create(MeshConfig(*shape))
    abstract_params = jax.eval_shape(lambda: host.params)
    fn, p_sh, in_sh = shard_sampler(sample, abstract_params, jax.eval_shape(lambda: inputs), CFG, part)
    out = fn(put_global(host.params, p_sh), put_global(inputs, in_sh), key)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert (np.asarray(ref)[:, 6:] != CFG.mask_token_id).all()


def test_eval_step_matches_one_device():
    _, host, batches, _ = setup()
    key = jax.random.key(5)
    eval_step = make_eval_step(CFG, TC)
    ref = jax.jit(eval_step)(host.params, batches[1], key)
    part = Partitioner.create(MeshConfig(2, 2, 2))
    abstract_params, abstract_batch = jax.eval_shape(lambda: (host.params, batches[1]))
    ev, p_sh, b_sh = shard_eval_step(eval_step, abstract_params, abstract_batch, CFG, part, num_replicated_args=1)
    got = ev(put_global(host.params, p_sh), put_global(batches[1], b_sh), key)
    np.testing.assert_allclose(float(got["val_elbo"]), float(ref["val_elbo"]), rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_saved_on_one_mesh_restores_on_another(tmp_path):
    _, host, batches, (_, _, ref_state2, ref_metrics2) = setup()
    save_step, load_step = sharded((2, 2, 2)), sharded((1, 4, 2))
    state, _ = save_step(put_global(host, save_step.state_shardings), save_step.shard_batch(batches[0]))
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
    ckpt.save(state, data_state={"next": 8}, meta={"model": CFG.to_dict()})
    ckpt.close()

    template = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, load_step.state_shardings
    )
    restored, data_state = Checkpointer(tmp_path / "ckpt", keep=1, async_save=False).restore(template, model_config=CFG)
    assert data_state == {"next": 8}
    q = restored.params["layers"]["attn"]["q"]["kernel"]
    assert q.sharding == load_step.state_shardings.params["layers"]["attn"]["q"]["kernel"]
    chex.assert_trees_all_close(restored, jax.device_get(state), atol=0, rtol=1e-4)
    new, metrics = load_step(restored, load_step.shard_batch(batches[1]))
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics2["loss"]), rtol=1e-5)
    chex.assert_trees_all_close(new.params, ref_state2.params, atol=3e-5, rtol=1e-4)
