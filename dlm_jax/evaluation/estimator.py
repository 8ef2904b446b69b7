"""`Estimator`: the recorded settings of a likelihood estimate, and the batched driver over requests."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from dlm_jax.evaluation.batching import pack_targets
from dlm_jax.evaluation.likelihood import ELBO_KINDS, chain_rule_log_probs, greedy_matches, mc_elbo_losses
from dlm_jax.models.config import ModelConfig

KINDS = (*ELBO_KINDS, "chain")
DEFAULT_MC_BATCH = 32  # mc_batch_size when not given: min(mc_num, 32)


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class Score(NamedTuple):
    """One request's log-likelihood estimate, whether greedy decoding reproduces the target,
    the Monte-Carlo standard error of `loglik` (0 for exact estimators) and the target length."""

    loglik: float
    is_greedy: bool
    stderr: float
    num_tokens: int


@dataclasses.dataclass(frozen=True)
class Estimator:
    """How log p(target | prompt) is estimated.

    kind: "elbo" (SMDM/Dream Monte-Carlo ELBO), "elbo_llada" (exactly k masked, k stratified) or
      "chain" (exact AR-order chain rule, one pass per target token).
    mc_num: Monte-Carlo samples per request; mc_batch_size of them share one forward pass and one
      stratification group, so mc_num must be a multiple of mc_batch_size (default: min(mc_num, 32)).
      The standard error comes from the spread over the mc_num / mc_batch_size rounds (undefined for one).
    eps: minimum mask ratio of "elbo" (p_mask = (1 - eps) t + eps).
    cfg_scale: classifier-free guidance on the logits (0 = off).
    greedy_check: for the ELBO kinds, also run LLaDA's greedy decode check (T extra passes).
    batch_size: requests per jitted call (rows = batch_size * mc_batch_size).
    seed: request i uses the key fold_in(key(seed), i), independent of batching.

    Example:
        >>> from dlm_jax.models import decoder
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> prompts, targets = [[1, 2, 3], [1]], [[4, 5], [6]]
        >>> exact = Estimator(kind="chain").score(params, cfg, prompts, targets)
        >>> [round(s.loglik, 1) for s in exact], [s.num_tokens for s in exact], exact[0].stderr
        ([-8.4, -4.1], [2, 1], 0.0)
        >>> bound = Estimator(kind="elbo", mc_num=8, mc_batch_size=4).score(params, cfg, prompts, targets)
        >>> bound[0].loglik < 0 < bound[0].stderr  # a Monte-Carlo estimate with its standard error
        True
    """

    kind: str = "elbo"
    mc_num: int = 128
    mc_batch_size: int | None = None
    eps: float = 1e-3
    cfg_scale: float = 0.0
    greedy_check: bool = True
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"estimator kind={self.kind!r} is not one of {KINDS}")
        if self.mc_batch_size is None:
            object.__setattr__(self, "mc_batch_size", min(int(self.mc_num), DEFAULT_MC_BATCH))
        for name in ("mc_num", "mc_batch_size", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.mc_num % self.mc_batch_size:
            raise ValueError(
                f"mc_num={self.mc_num} is not divisible by mc_batch_size={self.mc_batch_size}; "
                f"use a multiple of {self.mc_batch_size}"
            )
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps={self.eps} must be in [0, 1)")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def score(
        self,
        params,
        config: ModelConfig,
        prompts: list[list[int]],
        targets: list[list[int]],
        *,
        max_length: int | None = None,
        call: Callable[..., Any] | None = None,
    ) -> list[Score]:
        """Score every (prompt, target) pair; requests are sorted by length and batched.

        `call(kernel, *args, **kwargs)` runs the jitted kernels (default: directly; pass `DiffusionLM.call`
        for a model on a mesh)."""
        call = call or _direct
        config.require_mask_token()
        max_length = max_length or config.max_position_embeddings
        order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(targets[i])))
        base = jax.random.key(self.seed)
        out: list[Score | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = pack_targets(
                [prompts[i] for i in idx],
                [targets[i] for i in idx],
                max_length=max_length,
                pad_id=config.pad_token_id or 0,
                shifted=config.logit_shift,
            )
            for i, score in zip(idx, self._score_batch(params, config, batch, base, idx, call), strict=True):
                out[i] = score
        return out  # type: ignore[return-value]

    def _score_batch(self, params, config, batch, base_key, idx, call) -> list[Score]:
        n_tok = batch.target_lengths
        if self.kind == "chain":
            lp, greedy = call(chain_rule_log_probs, params, *batch, config=config, cfg_scale=self.cfg_scale)
            lp, greedy = np.asarray(lp, np.float64), np.asarray(greedy)
            return [Score(float(lp[r].sum()), bool(greedy[r].all()), 0.0, int(n_tok[r])) for r in range(len(idx))]
        keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(np.asarray(idx, np.uint32))
        losses = np.asarray(
            call(
                mc_elbo_losses,
                params,
                *batch,
                keys,
                config=config,
                mc_num=self.mc_num,
                mc_batch=self.mc_batch_size,
                kind=self.kind,
                eps=self.eps,
                cfg_scale=self.cfg_scale,
            ),
            np.float64,
        )
        if self.greedy_check:
            greedy = np.asarray(call(greedy_matches, params, *batch, config=config, cfg_scale=self.cfg_scale))
        else:
            greedy = np.zeros(len(idx), bool)
        rounds = losses.shape[1]
        stderr = losses.std(axis=1, ddof=1) / math.sqrt(rounds) if rounds > 1 else np.full(len(idx), math.nan)
        return [
            Score(-float(losses[r].mean()), bool(greedy[r]), float(stderr[r]), int(n_tok[r])) for r in range(len(idx))
        ]
