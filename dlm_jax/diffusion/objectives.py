"""Training objectives (MDM/SMDM/LLaDA, SFT, DiffuLLaMA, Dream, AR) as pure losses over a batch dict.

All diffusion objectives noise the batch with `masking.mask_tokens` and differ only in
(a) per-token weights and (b) the normaliser:

| objective  | weight                  | normaliser                                   |
|------------|-------------------------|----------------------------------------------|
| mdm        | 1/p                     | eligible tokens (B*L for packed text)        |
| sft        | 1/p                     | per-sequence response length, mean over B    |
| diffullama | 1/p                     | masked-and-scored count                      |
| dream      | CART / 1/p / 1-p        | masked-and-scored count                      |

Batch keys: `input_ids` [B, L] (required); optional `attention_mask` (1 = token), `prompt_mask`
(1 = prompt: never noised, never scored), `loss_mask` (1 = may be noised and scored).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dlm_jax.diffusion import masking, weights
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig

Batch = dict[str, jax.Array]

_AUTO_NORM = {"mdm": "tokens", "sft": "response", "diffullama": "masked", "dream": "masked", "ar": "tokens"}


def resolve_loss_norm(objective: str, loss_norm: str) -> str:
    """The normaliser an objective uses when `loss_norm="auto"`."""
    return _AUTO_NORM[objective] if loss_norm == "auto" else loss_norm


def token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in float32, [B, L]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _eligible(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(loss_mask, prompt_mask, attention_mask) as booleans/ints with defaults filled in."""
    ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    prompt = batch.get("prompt_mask")
    prompt = jnp.zeros(ids.shape, bool) if prompt is None else prompt.astype(bool)
    loss_mask = batch.get("loss_mask")
    loss_mask = jnp.ones(ids.shape, bool) if loss_mask is None else loss_mask.astype(bool)
    if attention_mask is not None:
        loss_mask = loss_mask & attention_mask.astype(bool)
    return loss_mask & ~prompt, prompt, attention_mask


def stochastic_length(rng: jax.Array, batch: Batch, ssl_ratio: float) -> Batch:
    """SMDM's stochastic sequence length: with probability `ssl_ratio` keep only a random prefix [1, L].

    Shapes stay static: the cut-off tail is removed from attention (as keys and queries) and
    from the loss, which gives the same logits on the prefix as truncating the batch.
    """
    if ssl_ratio <= 0.0:
        return batch
    ids = batch["input_ids"]
    seq_len = ids.shape[1]
    r_use, r_len = jax.random.split(rng)
    cut = jax.random.uniform(r_use, ()) < ssl_ratio
    length = jnp.where(cut, jax.random.randint(r_len, (), 1, seq_len + 1), seq_len)
    keep = (jnp.arange(seq_len) < length)[None, :]
    attention_mask = batch.get("attention_mask")
    attention_mask = jnp.ones(ids.shape, jnp.int32) if attention_mask is None else attention_mask
    return {**batch, "attention_mask": (attention_mask.astype(bool) & keep).astype(jnp.int32)}


def _normalise(weighted: jax.Array, scored: jax.Array, eligible: jax.Array, norm: str) -> jax.Array:
    if norm == "tokens":
        return weighted.sum() / jnp.maximum(eligible.sum(), 1)
    if norm == "masked":
        return weighted.sum() / jnp.maximum(scored.sum(), 1)
    if norm == "response":
        per_seq = weighted.sum(-1) / jnp.maximum(eligible.sum(-1), 1)
        return per_seq.mean()
    raise ValueError(f"loss_norm={norm!r} is not one of ('tokens', 'masked', 'response')")


def ar_loss(params: Any, batch: Batch, *, model_config: ModelConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Causal next-token CE averaged over eligible target tokens (the AR baseline)."""
    eligible, _, attention_mask = _eligible(batch)
    ids = batch["input_ids"]
    logits = decoder.apply(params, ids, attention_mask, config=model_config, causal=True)
    ce = token_ce(logits[:, :-1], ids[:, 1:])
    scored = eligible[:, 1:]
    loss = (ce * scored).sum() / jnp.maximum(scored.sum(), 1)
    return loss, {"ce": loss, "scored_tokens": scored.sum(), "tokens": scored.sum()}


@flax.struct.dataclass
class Corrupted:
    """A noised batch: what the model sees and what the loss needs to weight it."""

    noisy_ids: jax.Array
    masked: jax.Array
    p_mask: jax.Array
    eligible: jax.Array
    attention_mask: jax.Array | None


def corrupt(
    rng: jax.Array,
    batch: Batch,
    *,
    mask_id: int,
    eps: float = 1e-3,
    time_sampling: str = "uniform",
    cfg_prompt_dropout: float = 0.0,
    t: jax.Array | None = None,
) -> Corrupted:
    """Sample t per sequence, p = (1-eps) t + eps, and mask eligible tokens with `masking.mask_tokens`.

    The prompt (`prompt_mask`) is never noised; with probability `cfg_prompt_dropout` a row's
    whole prompt is replaced by mask tokens (classifier-free guidance training), unscored.
    """
    ids = batch["input_ids"]
    eligible, prompt, attention_mask = _eligible(batch)
    r_t, r_mask, r_cfg = jax.random.split(rng, 3)
    if t is None:
        t = masking.sample_times(r_t, ids.shape[0], time_sampling)
    p_mask = masking.mask_probability(t, eps)
    noisy, masked = masking.mask_tokens(r_mask, ids, p_mask, mask_id, eligible)
    if cfg_prompt_dropout > 0.0:
        drop = jax.random.uniform(r_cfg, (ids.shape[0], 1)) < cfg_prompt_dropout
        noisy = jnp.where(drop & prompt, mask_id, noisy)
    return Corrupted(noisy, masked, p_mask, eligible, attention_mask)


def weighted_loss(
    logits: jax.Array,
    targets: jax.Array,
    corrupted: Corrupted,
    *,
    objective: str = "mdm",
    shift: bool = False,
    time_weighting: str = "cart",
    cart_p: float = 0.3,
    loss_norm: str = "auto",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective's weighted, normalised CE given raw logits and the corruption that produced them.

    Example (one masked token of three, MDM, p = 0.5):
        loss = CE(logits[0, 1], targets[0, 1]) / 0.5 / 3
    """
    if objective not in ("mdm", "sft", "diffullama", "dream"):
        raise ValueError(f"objective={objective!r} is not a diffusion objective (mdm, sft, diffullama, dream)")
    masked, p_mask = corrupted.masked, corrupted.p_mask
    scored = masked
    if shift:
        logits = decoder.shift_logits(logits)
        scored = scored.at[:, 0].set(False)
    ce = token_ce(logits, targets)
    seq_len = targets.shape[1]
    if objective == "dream" and time_weighting == "cart":
        w = weights.cart_weights(masked, cart_p)
    elif objective == "dream" and time_weighting == "linear":
        w = weights.linear_time(p_mask, seq_len)
    else:
        w = weights.inverse_time(p_mask, seq_len)
    weighted = ce * w * scored
    loss = _normalise(weighted, scored, corrupted.eligible, resolve_loss_norm(objective, loss_norm))
    aux = {
        "ce": (ce * scored).sum() / jnp.maximum(scored.sum(), 1),
        "scored_tokens": scored.sum(),
        "tokens": corrupted.eligible.sum(),
    }
    return loss, aux


def diffusion_loss(
    params: Any,
    batch: Batch,
    rng: jax.Array,
    *,
    model_config: ModelConfig,
    objective: str = "mdm",
    eps: float = 1e-3,
    time_sampling: str = "uniform",
    time_weighting: str = "cart",
    cart_p: float = 0.3,
    loss_norm: str = "auto",
    cfg_prompt_dropout: float = 0.0,
    attention_bias: jax.Array | None = None,
    t: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One Monte-Carlo estimate of a masked-diffusion objective: `corrupt` -> decoder -> `weighted_loss`.

    Logits are shifted one place when `model_config.logit_shift` (Dream, DiffuLLaMA, DiffuGPT);
    position 0 is then never scored. Pass `t` to fix the diffusion times (tests, ELBO grids).

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> batch = {"input_ids": jnp.arange(16).reshape(2, 8)}
        >>> loss, aux = diffusion_loss(params, batch, jax.random.key(0), model_config=cfg)
        >>> loss.shape, int(aux["tokens"])
        ((), 16)

        At t = 1 every token is masked, so a fresh model's loss is close to log(64) = 4.16:

        >>> loss, aux = diffusion_loss(params, batch, jax.random.key(0), model_config=cfg, t=jnp.ones(2))
        >>> round(float(loss), 1), int(aux["scored_tokens"])
        (4.2, 16)
    """
    corrupted = corrupt(
        rng,
        batch,
        mask_id=model_config.require_mask_token(),
        eps=eps,
        time_sampling=time_sampling,
        cfg_prompt_dropout=cfg_prompt_dropout,
        t=t,
    )
    logits = decoder.apply(
        params, corrupted.noisy_ids, corrupted.attention_mask, attention_bias=attention_bias, config=model_config
    )
    return weighted_loss(
        logits,
        batch["input_ids"],
        corrupted,
        objective=objective,
        shift=model_config.logit_shift,
        time_weighting=time_weighting,
        cart_p=cart_p,
        loss_norm=loss_norm,
    )


def elbo_bound(
    params: Any, batch: Batch, rng: jax.Array, *, model_config: ModelConfig, num_samples: int, eps: float = 1e-3
) -> jax.Array:
    """Per-token upper bound on the NLL (the MDM ELBO), averaged over `num_samples` stratified times.

    Uses the MDM weighting (1/p, normalised by eligible tokens) regardless of the training
    objective, so MDM, DiffuLLaMA and Dream runs report comparable numbers.
    """
    t_rng, m_rng = jax.random.split(rng)
    t_all = masking.sample_times(t_rng, num_samples * batch["input_ids"].shape[0], "stratified")
    t_all = jax.random.permutation(t_rng, t_all).reshape(num_samples, -1)

    def one(carry, xs):
        t, key = xs
        loss, _ = diffusion_loss(params, batch, key, model_config=model_config, objective="mdm", eps=eps, t=t)
        return carry + loss, None

    total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), (t_all, jax.random.split(m_rng, num_samples)))
    return total / num_samples
