"""`TrainState`: the one pytree a training step reads and returns (step, params, optimiser state, rng)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; checkpointing this (plus the data iterator) resumes exactly.

    `rng` is raw uint32 key data (shape [2] for the default threefry impl) so it saves and
    shards like any other array; `step` is an int32 scalar array.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def as_key_data(rng: jax.Array | int) -> jax.Array:
    """Raw uint32 key data from a typed key, raw key data or an integer seed."""
    if isinstance(rng, int):
        return jax.random.key_data(jax.random.key(rng))
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng


def create_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array | int) -> TrainState:
    """A fresh state at step 0.

    Example:
        >>> from dlm_jax.models import decoder
        >>> from dlm_jax.models.config import ModelConfig
        >>> from dlm_jax.training.config import TrainConfig
        >>> from dlm_jax.training.optimizer import make_optimizer
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> state = create_train_state(params, make_optimizer(TrainConfig()), jax.random.key(0))
        >>> int(state.step), state.rng.dtype, state.rng.shape  # the key as raw uint32 data
        (0, dtype('uint32'), (2,))
    """
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=as_key_data(rng)
    )
