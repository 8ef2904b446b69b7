"""Jitted likelihood kernels for masked diffusion LMs: Monte-Carlo ELBOs, chain rule, greedy check.

Every kernel scores a right-padded batch of `prompt + target` rows (see `batching.TargetBatch`);
only target tokens are ever masked. For shifted families (`config.logit_shift`, Dream/DiffuLLaMA/
DiffuGPT) the prediction of token i is read at position i-1 (`decoder.shift_logits`). With
`cfg_scale > 0` the logits are `decoder.cfg_mix(cond, un, cfg_scale)` where the unconditional pass
also masks the prompt (LLaDA).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import masking
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig

ELBO_KINDS = ("elbo", "elbo_llada")


def _gather_rows(x: jax.Array, pos: jax.Array) -> jax.Array:
    """`x` [B, L, ...] at positions `pos` [B, T] (clipped into range): [B, T, ...]."""
    index = jnp.clip(pos, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _logits_at(params, tokens, attention_mask, target_pos, config: ModelConfig) -> jax.Array:
    """float32 logits [B, T, V] predicting the tokens at `target_pos` (shift applied): the head on those rows only."""
    hidden = decoder.apply(params, tokens, attention_mask, config=config, return_hidden=True)
    if config.logit_shift:
        hidden = decoder.shift_logits(hidden)
    return decoder.head(params, config, _gather_rows(hidden, target_pos))


def target_log_probs(
    params,
    tokens: jax.Array,
    attention_mask: jax.Array,
    target_pos: jax.Array,
    *,
    config: ModelConfig,
    cfg_scale: float = 0.0,
    prompt_mask: jax.Array | None = None,
) -> jax.Array:
    """Log-probabilities [B, T, V] over the vocabulary for the tokens at `target_pos` [B, T].

    `prompt_mask` [B, L] marks the positions blanked in the unconditional pass (needed when
    `cfg_scale > 0`).

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> ids = jnp.array([[1, 2, 3, 63, 63]])  # prompt 1 2 3, then two masked target slots
        >>> lp = target_log_probs(params, ids, jnp.ones_like(ids), jnp.array([[3, 4]]), config=cfg)
        >>> lp.shape, jnp.exp(lp).sum(-1).round(4).tolist()  # [B, T, V]: one distribution per slot
        ((1, 2, 64), [[1.0, 1.0]])
    """
    if cfg_scale == 0.0:
        logits = _logits_at(params, tokens, attention_mask, target_pos, config)
    else:
        if prompt_mask is None:
            raise ValueError("cfg_scale > 0 needs prompt_mask (the positions masked in the unconditional pass)")
        uncond = jnp.where(prompt_mask, config.require_mask_token(), tokens)
        both = _logits_at(
            params,
            jnp.concatenate([tokens, uncond]),
            jnp.concatenate([attention_mask, attention_mask]),
            jnp.concatenate([target_pos, target_pos]),
            config,
        )
        cond, un = jnp.split(both, 2)
        logits = decoder.cfg_mix(cond, un, cfg_scale)
    return jax.nn.log_softmax(logits, axis=-1)


def _token_log_probs(params, noisy, tokens, attention_mask, is_target, target_pos, config, cfg_scale):
    prompt = attention_mask.astype(bool) & ~is_target
    logp = target_log_probs(
        params, noisy, attention_mask, target_pos, config=config, cfg_scale=cfg_scale, prompt_mask=prompt
    )
    true_tok = _gather_rows(tokens, target_pos)
    return jnp.take_along_axis(logp, true_tok[..., None], axis=-1)[..., 0], logp, true_tok


def sample_target_masks(key: jax.Array, is_target: jax.Array, *, mc_batch: int, kind: str, eps: float):
    """Stratified masks [mc_batch, L] over one row's target positions, and their `p_mask` [mc_batch].

    `kind="elbo"` (SMDM/Dream): the training objectives' times and rate, `masking.sample_times(...,
    "antithetic")` (`t_b = (u + b/B) mod 1`, one draw in each of B strata) and `masking.mask_probability`
    (`p = (1-eps) t + eps`); each target token is masked independently with probability p.
    `kind="elbo_llada"`: exactly k tokens masked, with `k_b = ((k0 + round(b T / B)) mod T) + 1` for
    k0 uniform in 0..T-1 (T target tokens), `p = k/T`.

    Example:
        >>> is_t = jnp.array([False, True, True, True])
        >>> masks, p = sample_target_masks(jax.random.key(0), is_t, mc_batch=4, kind="elbo", eps=1e-3)
        >>> masks.shape, bool(masks[:, 0].any())
        ((4, 4), False)
    """
    k_t, k_m = jax.random.split(key)
    if kind == "elbo":
        p = masking.mask_probability(masking.sample_times(k_t, mc_batch, "antithetic"), eps)
        masks = jax.random.uniform(k_m, (mc_batch, is_target.shape[0])) < p[:, None]
        return masks & is_target[None], p
    if kind == "elbo_llada":
        strata = jnp.arange(mc_batch, dtype=jnp.float32) / mc_batch
        n = jnp.maximum(is_target.sum(), 1).astype(jnp.float32)
        k0 = jnp.floor(jax.random.uniform(k_t) * n)
        k = jnp.mod(k0 + jnp.floor(strata * n + 0.5), n) + 1.0
        noise = jnp.where(is_target[None], jax.random.uniform(k_m, (mc_batch, is_target.shape[0])), 2.0)
        ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
        return (ranks < k[:, None]) & is_target[None], k / n
    raise ValueError(f"kind={kind!r} is not one of {ELBO_KINDS}")


@partial(jax.jit, static_argnames=("config", "mc_num", "mc_batch", "kind", "eps", "cfg_scale"))
def mc_elbo_losses(
    params,
    tokens: jax.Array,
    attention_mask: jax.Array,
    is_target: jax.Array,
    target_pos: jax.Array,
    target_valid: jax.Array,
    keys: jax.Array,
    *,
    config: ModelConfig,
    mc_num: int,
    mc_batch: int,
    kind: str = "elbo",
    eps: float = 1e-3,
    cfg_scale: float = 0.0,
) -> jax.Array:
    """Monte-Carlo ELBO losses (negative log-likelihood bounds), one per row and round: [N, mc_num // mc_batch].

    Each round draws `mc_batch` stratified masks per row (`keys` [N] gives every row its own
    stream, so a row's estimate does not depend on its batch neighbours) and computes
    `sum_masked CE / p_mask` averaged over the round. The log-likelihood estimate is minus the
    mean over rounds; rounds are independent, so their spread gives a standard error.

    Example:
        >>> from dlm_jax.evaluation.batching import pack_targets
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> b = pack_targets([[1, 2, 3], [1]], [[4, 5], [6]], max_length=64)
        >>> keys = jax.random.split(jax.random.key(0), 2)
        >>> losses = mc_elbo_losses(params, *b, keys, config=cfg, mc_num=8, mc_batch=4)
        >>> losses.shape  # [requests, rounds]; -losses.mean(-1) estimates log p(target | prompt)
        (2, 2)
    """
    n, length = tokens.shape
    rounds = mc_num // mc_batch
    mask_id = config.require_mask_token()
    rep = partial(jnp.repeat, repeats=mc_batch, axis=0)
    toks_r, attn_r, ist_r, pos_r, valid_r = map(rep, (tokens, attention_mask, is_target, target_pos, target_valid))
    round_keys = jax.vmap(lambda k: jax.random.split(k, rounds))(keys)  # [N, R]
    sampler = partial(sample_target_masks, mc_batch=mc_batch, kind=kind, eps=eps)

    def one_round(carry, keys_r):
        masks, p = jax.vmap(sampler)(keys_r, is_target)  # [N, Bm, L], [N, Bm]
        masks = masks.reshape(n * mc_batch, length)
        noisy = jnp.where(masks, mask_id, toks_r)
        lp, _, _ = _token_log_probs(params, noisy, toks_r, attn_r, ist_r, pos_r, config, cfg_scale)
        masked_at = _gather_rows(masks, pos_r) & valid_r
        loss = jnp.sum(jnp.where(masked_at, -lp, 0.0), axis=-1) / p.reshape(-1)
        return carry, loss.reshape(n, mc_batch).mean(-1)

    _, per_round = jax.lax.scan(one_round, None, jnp.swapaxes(round_keys, 0, 1))
    return per_round.T


@partial(jax.jit, static_argnames=("config", "cfg_scale"))
def chain_rule_log_probs(
    params,
    tokens: jax.Array,
    attention_mask: jax.Array,
    is_target: jax.Array,
    target_pos: jax.Array,
    target_valid: jax.Array,
    *,
    config: ModelConfig,
    cfg_scale: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Chain-rule (AR-order) log-probs [N, T] and greedy flags [N, T].

    Pass j masks target tokens j, j+1, ... and scores token j; T passes in one `lax.scan`.
    `log p(target | prompt)` is the row sum. Padded slots give 0 and True.

    Example:
        >>> from dlm_jax.evaluation.batching import pack_targets
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> b = pack_targets([[1, 2, 3], [1]], [[4, 5], [6]], max_length=64)
        >>> lp, greedy = chain_rule_log_probs(params, *b, config=cfg)
        >>> lp.shape, lp[0, :3].round(2).tolist()  # target slots padded to 8; padded slots give 0
        ((2, 8), [-4.25, -4.16, 0.0])
        >>> lp.sum(-1).round(1).tolist(), greedy.all(-1).tolist()  # untrained: about -log(64) = -4.16 a token
        ([-8.4, -4.1], [False, False])
    """
    mask_id = config.require_mask_token()
    slot = jnp.cumsum(is_target, axis=-1) - 1

    def step(carry, j):
        noisy = jnp.where(is_target & (slot >= j), mask_id, tokens)
        pos_j = jax.lax.dynamic_slice_in_dim(target_pos, j, 1, axis=1)
        lp, logp, true_tok = _token_log_probs(
            params, noisy, tokens, attention_mask, is_target, pos_j, config, cfg_scale
        )
        greedy = jnp.argmax(logp, axis=-1) == true_tok
        valid = jax.lax.dynamic_slice_in_dim(target_valid, j, 1, axis=1)
        return carry, (jnp.where(valid, lp, 0.0)[:, 0], (greedy | ~valid)[:, 0])

    _, (lps, greedy) = jax.lax.scan(step, None, jnp.arange(target_pos.shape[1]))
    return lps.T, greedy.T


@partial(jax.jit, static_argnames=("config", "cfg_scale"))
def greedy_matches(
    params,
    tokens: jax.Array,
    attention_mask: jax.Array,
    is_target: jax.Array,
    target_pos: jax.Array,
    target_valid: jax.Array,
    *,
    config: ModelConfig,
    cfg_scale: float = 0.0,
) -> jax.Array:
    """Whether greedy diffusion decoding of the masked target reproduces it exactly: bool [N].

    LLaDA's check: start with every target token masked; each of T passes unmasks the one
    still-masked position whose argmax is most confident, writing that argmax.

    Example:
        >>> from dlm_jax.evaluation.batching import pack_targets
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), cfg)
        >>> masked = jnp.array([[1, 2, 3, 63]])  # the model's own guess for the slot after 1 2 3
        >>> best = int(target_log_probs(params, masked, jnp.ones_like(masked), jnp.array([[3]]), config=cfg).argmax())
        >>> b = pack_targets([[1, 2, 3], [1, 2, 3]], [[best], [(best + 1) % 63]], max_length=64)
        >>> greedy_matches(params, *b, config=cfg).tolist()
        [True, False]
    """
    mask_id = config.require_mask_token()
    canvas0 = jnp.where(is_target, mask_id, tokens)
    rows = jnp.arange(tokens.shape[0])

    def step(carry, _):
        canvas, pending = carry
        _, logp, _ = _token_log_probs(params, canvas, tokens, attention_mask, is_target, target_pos, config, cfg_scale)
        conf = jnp.where(pending, jnp.max(logp, axis=-1), -jnp.inf)
        best = jnp.argmax(conf, axis=-1)
        pred = jnp.argmax(logp, axis=-1)[rows, best]
        pos = target_pos[rows, best]
        left = pending.any(-1)
        canvas = canvas.at[rows, pos].set(jnp.where(left, pred, canvas[rows, jnp.clip(pos, 0, canvas.shape[1] - 1)]),
                                          mode="drop")
        pending = pending.at[rows, best].set(False)
        return (canvas, pending), None

    (canvas, _), _ = jax.lax.scan(step, (canvas0, target_valid), None, length=target_pos.shape[1])
    same = _gather_rows(canvas, target_pos) == _gather_rows(tokens, target_pos)
    return jnp.all(same | ~target_valid, axis=-1)
