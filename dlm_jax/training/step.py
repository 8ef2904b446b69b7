"""Pure (un-jitted) train and eval steps: `(state, batch) -> (state, metrics)`; callers jit with their shardings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import einops
import jax
import jax.numpy as jnp
import optax

from dlm_jax.diffusion import masking, objectives
from dlm_jax.models.config import ModelConfig
from dlm_jax.training.config import TrainConfig
from dlm_jax.training.optimizer import make_optimizer, make_schedule
from dlm_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def check_batch(batch: Batch) -> None:
    """The batch contract of the train and eval steps, checked while tracing: [B, L] arrays of one shape
    (`input_ids` and the optional `attention_mask`, `prompt_mask`, `loss_mask`), integer token ids."""
    arrays = list(batch.values())
    chex.assert_rank(arrays, 2)
    chex.assert_equal_shape(arrays)
    chex.assert_type(batch["input_ids"], int)


def make_loss_fn(model_config: ModelConfig, train_config: TrainConfig) -> Callable:
    """`loss_fn(params, batch, rng, attention_bias=None) -> (loss, aux)` for the configured objective."""
    tc = train_config

    def loss_fn(params: Any, batch: Batch, rng: jax.Array, attention_bias: jax.Array | None = None):
        ssl_rng, obj_rng = jax.random.split(rng)
        batch = objectives.stochastic_length(ssl_rng, batch, tc.ssl_ratio)
        if tc.objective == "ar":
            return objectives.ar_loss(params, batch, model_config=model_config)
        return objectives.diffusion_loss(
            params,
            batch,
            obj_rng,
            model_config=model_config,
            objective=tc.objective,
            eps=tc.eps,
            time_sampling=tc.time_sampling,
            time_weighting=tc.time_weighting,
            cart_p=tc.cart_p,
            loss_norm=tc.loss_norm,
            cfg_prompt_dropout=tc.cfg_prompt_dropout,
            attention_bias=attention_bias,
        )

    return loss_fn


def make_train_step(
    model_config: ModelConfig, train_config: TrainConfig, optimizer: optax.GradientTransformation | None = None
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure train step: split rng, (accumulate) grads over `grad_accum` micro-batches, one optimiser update.

    `batch` arrays carry a leading batch axis of `train_config.batch_size` rows (or any multiple of
    `grad_accum`). bf16 compute with fp32 master weights comes from the model config
    (`param_dtype=float32, compute_dtype=bfloat16`): params and grads stay float32.

    Example:
        >>> from dlm_jax.models import decoder
        >>> from dlm_jax.training.state import create_train_state
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> tc = TrainConfig(batch_size=2, seq_len=8, lr=1e-2, warmup_steps=0, max_steps=10)
        >>> state = create_train_state(decoder.init(jax.random.key(0), cfg), make_optimizer(tc), 0)
        >>> step = jax.jit(make_train_step(cfg, tc), donate_argnums=0)
        >>> batch = {"input_ids": jnp.arange(16).reshape(2, 8)}
        >>> for _ in range(3):
        ...     state, metrics = step(state, batch)
        >>> int(state.step), sorted(metrics)
        (3, ['ce', 'grad_norm', 'loss', 'lr', 'masked_tokens', 'tokens'])
    """
    tc = train_config
    optimizer = optimizer or make_optimizer(tc)
    schedule = make_schedule(tc)
    loss_fn = make_loss_fn(model_config, tc)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        check_batch(batch)
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        anneal_rng, micro_rng = jax.random.split(step_rng)
        bias = None
        if tc.objective == "diffullama" and tc.anneal_steps > 0:
            bias = masking.anneal_attention_bias(anneal_rng, state.step, batch["input_ids"].shape[1], tc.anneal_steps)
        if tc.grad_accum == 1:
            (loss, aux), grads = grad_fn(state.params, batch, micro_rng, bias)
        else:
            micro = jax.tree.map(lambda x: einops.rearrange(x, "(micro rows) len -> micro rows len",
                                                            micro=tc.grad_accum), batch)

            def body(carry, xs):
                mb, key = xs
                (l_, a_), g_ = grad_fn(state.params, mb, key, bias)
                return jax.tree.map(jnp.add, carry, (l_, a_, g_)), None

            zeros = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), micro_rng, bias))
            init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[0][0], zeros[0][1], zeros[1]))
            (loss, aux, grads), _ = jax.lax.scan(body, init, (micro, jax.random.split(micro_rng, tc.grad_accum)))
            loss = loss / tc.grad_accum
            grads = jax.tree.map(lambda g: g / tc.grad_accum, grads)
            aux = {"ce": aux["ce"] / tc.grad_accum, "scored_tokens": aux["scored_tokens"], "tokens": aux["tokens"]}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "ce": aux["ce"],
            "grad_norm": optax.global_norm(grads),
            "lr": schedule(state.step),
            "masked_tokens": aux["scored_tokens"].astype(jnp.float32),
            "tokens": aux["tokens"].astype(jnp.float32),
        }
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng)
        )
        return new_state, metrics

    return train_step


def make_eval_step(
    model_config: ModelConfig, train_config: TrainConfig
) -> Callable[[Any, Batch, jax.Array], Metrics]:
    """The pure eval step `(params, batch, rng) -> metrics`.

    Diffusion objectives report `val_elbo`: the MDM per-token NLL bound averaged over
    `eval_mc_samples` stratified times (the number SMDM's scaling laws compare against AR);
    the AR baseline reports its exact per-token NLL under the same key.

    Example:
        >>> from dlm_jax.models import decoder
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> ev = jax.jit(make_eval_step(cfg, TrainConfig(eval_mc_samples=4)))
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> val = ev(params, {"input_ids": jnp.arange(32).reshape(4, 8)}, jax.random.key(1))["val_elbo"]
        >>> round(float(val), 1)  # a Monte-Carlo estimate of the bound, in nats per token
        5.9
    """
    tc = train_config

    def eval_step(params: Any, batch: Batch, rng: jax.Array) -> Metrics:
        check_batch(batch)
        if tc.objective == "ar":
            nll, _ = objectives.ar_loss(params, batch, model_config=model_config)
            return {"val_elbo": nll}
        elbo = objectives.elbo_bound(
            params, batch, rng, model_config=model_config, num_samples=tc.eval_mc_samples, eps=tc.eps
        )
        return {"val_elbo": elbo}

    return eval_step
