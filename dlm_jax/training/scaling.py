"""Compute-optimal bookkeeping (SMDM): steps from a FLOPs budget C = 6 N D, and power-law fits of loss vs C."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dlm_jax.models.config import ModelConfig
from dlm_jax.training.config import TrainConfig


def steps_for_flops(flops: float, model_config: ModelConfig, global_batch: int, seq_len: int) -> int:
    """max_steps = C / (6 N * global_batch * seq_len), N = non-embedding parameters; at least 1.

    Example:
        >>> cfg = ModelConfig.from_preset("smdm_6m")
        >>> cfg.non_embedding_params()
        6294784
        >>> steps_for_flops(6e12, cfg, 8, 128)  # 6e12 // (6 * 6294784 * 8 * 128)
        155
    """
    n = model_config.non_embedding_params()
    return max(1, int(flops // (6 * n * global_batch * seq_len)))


def apply_flops_budget(train: TrainConfig, model_config: ModelConfig) -> TrainConfig:
    """`train` with `max_steps` from `train.flops` and SMDM's warmup max(100, 1% of steps).

    The warmup is capped at 10% of the run so that tiny sweep runs (a few hundred steps)
    still spend most of their budget past warmup; the cap never binds beyond 1000 steps.
    """
    if train.flops is None:
        return train
    steps = steps_for_flops(train.flops, model_config, train.batch_size, train.seq_len)
    warmup = min(max(100, math.ceil(0.01 * steps)), max(1, steps // 10))
    return dataclasses.replace(train, max_steps=steps, warmup_steps=warmup)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """loss = a * C^b (b < 0 when loss falls with compute)."""

    a: float
    b: float

    def __call__(self, flops: np.ndarray | float) -> np.ndarray:
        return self.a * np.asarray(flops, float) ** self.b


def fit_power_law(flops: list[float], losses: list[float]) -> PowerLaw:
    """Least-squares line in log-log space through (C, loss) points (needs two distinct C).

    Example:
        >>> fit = fit_power_law([1e9, 1e10], [4.0, 2.0])
        >>> round(fit.b, 4)
        -0.301
    """
    c, y = np.log(np.asarray(flops, float)), np.log(np.asarray(losses, float))
    if len(set(c.tolist())) < 2:
        raise ValueError("fit_power_law needs at least two distinct FLOPs budgets")
    b, log_a = np.polyfit(c, y, 1)
    return PowerLaw(float(math.exp(log_a)), float(b))
