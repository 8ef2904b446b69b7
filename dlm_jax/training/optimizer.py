"""AdamW with linear warmup + cosine decay, global-norm clipping and a no-decay mask for norms and biases."""

from __future__ import annotations

from typing import Any

import jax
import optax

from dlm_jax.training.config import TrainConfig

_NO_DECAY_LEAVES = ("scale", "bias")


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Learning rate: 0 -> `lr` linearly over `warmup_steps`, then cosine down to `min_lr` at `max_steps`.

    Example:
        >>> sched = make_schedule(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100))
        >>> float(sched(10)), float(sched(100))
        (0.001, 0.0001)
    """
    warmup = min(config.warmup_steps, config.max_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=warmup,
        decay_steps=max(config.max_steps, warmup + 1),
        end_value=config.min_lr,
    )


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: everything except norm scales and biases."""

    def keep(path, _leaf) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return name not in _NO_DECAY_LEAVES and "norm" not in "/".join(str(getattr(k, "key", k)) for k in path)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW(b1, b2, weight_decay on matrices/embeddings only) after clipping the global grad norm to `clip`.

    Gradient accumulation is done by the train step (one optimiser update per step over
    `grad_accum` micro-batches), so the step counter and the schedule count real updates.

    Example:
        >>> import jax.numpy as jnp
        >>> opt = make_optimizer(TrainConfig(lr=1e-3, warmup_steps=0, max_steps=100, weight_decay=0.0))
        >>> params = {"w": jnp.ones(3)}
        >>> updates, opt_state = opt.update({"w": jnp.array([100.0, -1.0, 0.0])}, opt.init(params), params)
        >>> updates["w"].round(6).tolist()  # Adam's first step: lr times the sign of the gradient
        [-0.001, 0.001, 0.0]
    """
    chain = []
    if config.clip > 0:
        chain.append(optax.clip_by_global_norm(config.clip))
    chain.append(
        optax.adamw(
            learning_rate=make_schedule(config),
            b1=config.b1,
            b2=config.b2,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*chain)
