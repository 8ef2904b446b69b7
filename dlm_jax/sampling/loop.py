"""The reverse process: one pure step `(state, step) -> state` driven by one `lax.while_loop`, all under one jit."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.ops.token_stats import TokenStats
from dlm_jax.sampling.algorithms import RULES, Context, read_positions
from dlm_jax.sampling.blocks import generate_blocks, stop_ids
from dlm_jax.sampling.config import GenerateConfig
from dlm_jax.sampling.rows import feeding_rows, guided_logits, model_hidden, row_stats
from dlm_jax.sampling.schedules import diffullama_keep_rates, dream_transfer_fractions
from dlm_jax.sampling.stats import forbid_ids, position_stats


class GenerateOutput(NamedTuple):
    """`sequences` [B, L + G]; `history` [steps, B, L + G] (canvas after each step; `max_new_tokens` frames
    for a parallel rule, whose step count is not known in advance; the last canvas repeats) or None;
    `nfe` [B] model calls giving logits each row needed until it had no masks left (CFG counts 2 per step;
    a K/V cache refresh is not one, its cost is in `forward_equivalents`);
    `tokens_per_step` [B] positions decoded per step; `forward_equivalents` [B] the trunk's FLOPs in
    forwards over the whole canvas (equal to `nfe` for the exact sampler; see `blocks.forward_cost`)."""

    sequences: Any
    history: Any
    nfe: Any
    tokens_per_step: Any = None
    forward_equivalents: Any = None


class SamplerState(NamedTuple):
    x: jax.Array  # [B, L] canvas
    pending: jax.Array  # [B, L] bool, positions still to decode
    step: jax.Array  # int32 scalar, steps done
    nfe: jax.Array  # [B] int32
    carry: Any  # the unmasking rule's own state
    history: jax.Array  # [steps, B, L] or [0, B, L] when not recorded


def _schedule(gen: GenerateConfig) -> np.ndarray:
    if gen.transfer_mode == "dream":
        return dream_transfer_fractions(gen.steps, gen.eps)
    if gen.transfer_mode == "diffullama":
        return diffullama_keep_rates(gen.steps)
    return np.zeros((gen.steps,), np.float32)


def _shifted(config: ModelConfig, values: Any) -> Any:
    """`decoder.shift_logits` on every [B, L, ...] leaf of `values` when the model's logits are shifted."""
    return jax.tree.map(decoder.shift_logits, values) if config.logit_shift else values


def make_step(params: Any, config: ModelConfig, gen: GenerateConfig, ctx: Context, attention_mask, rng, prompt):
    """The sampler step `(state) -> state` for this config (the step index lives in the state)."""
    mask_id = config.require_mask_token()
    rule = RULES[gen.alg]
    passes = 2 if gen.cfg_scale > 0 else 1

    def hooked_stats(state: SamplerState, token_key: jax.Array) -> tuple[TokenStats, jax.Array]:
        """Statistics of every position from the full [B, L, V] logits, which the hooks see (shifted)."""
        raw = guided_logits(params, config, gen, model_hidden(params, config, gen, state.x, attention_mask, prompt))
        logits = _shifted(config, raw)
        if gen.logits_hook is not None:
            logits = gen.logits_hook(state.step, state.x, logits)
            return position_stats(forbid_ids(logits, gen, mask_id), gen, token_key, impl=config.sampling_impl), logits
        stats = position_stats(forbid_ids(raw, gen, mask_id), gen, token_key, impl=config.sampling_impl)
        return _shifted(config, stats), logits

    def read_stats(state: SamplerState, token_key: jax.Array) -> TokenStats:
        """Statistics of the positions the rule reads: the head and reduction run only on their rows."""
        needed = feeding_rows(read_positions(ctx, state.pending, state.step), config.logit_shift)
        hidden = model_hidden(params, config, gen, state.x, attention_mask, prompt)
        stats = row_stats(params, config, gen, hidden, needed, token_key)
        return _shifted(config, stats)  # statistics commute with the shift

    def step_fn(state: SamplerState) -> SamplerState:
        i = state.step
        token_key, rule_key = jax.random.split(jax.random.fold_in(rng, i))
        if gen.has_hooks:
            stats, logits = hooked_stats(state, token_key)
        else:
            stats = read_stats(state, token_key)
        transfer, tokens, carry = rule(ctx, stats, state.pending, i, rule_key, state.carry)
        x = jnp.where(transfer, tokens.astype(state.x.dtype), state.x)
        if gen.token_hook is not None:
            x = gen.token_hook(i, x, logits)
        pending = state.pending & ~transfer if gen.transfer_mode == "diffullama" else x == mask_id
        nfe = state.nfe + passes * jnp.any(state.pending, axis=1).astype(jnp.int32)
        history = state.history
        if gen.output_history:
            history = jax.lax.dynamic_update_index_in_dim(history, x, i, axis=0)
        if gen.step_callback is not None:
            jax.debug.callback(gen.step_callback, i, x)
        return SamplerState(x, pending, i + 1, nfe, carry, history)

    return step_fn


@functools.partial(jax.jit, static_argnames=("config", "gen"))
def _generate(params, input_ids, attention_mask, src_mask, rng, *, config: ModelConfig, gen: GenerateConfig):
    mask_id = config.require_mask_token()
    passes = 2 if gen.cfg_scale > 0 else 1
    if gen.blockwise:
        x, history, nfe, equiv = generate_blocks(params, config, gen, input_ids, attention_mask, rng)
        per_step = jnp.float32(gen.max_new_tokens) / jnp.maximum(nfe // passes, 1)
        return GenerateOutput(x, history, nfe, per_step.astype(jnp.float32), equiv)
    batch, prompt_len = input_ids.shape
    new = gen.max_new_tokens
    canvas = jnp.concatenate([input_ids, jnp.full((batch, new), mask_id, input_ids.dtype)], axis=1)
    if attention_mask is not None:
        attention_mask = jnp.concatenate([attention_mask, jnp.ones((batch, new), attention_mask.dtype)], axis=1)
    if gen.transfer_mode == "diffullama":
        src = jnp.zeros_like(input_ids, bool) if src_mask is None else src_mask.astype(bool)
        maskable = ~jnp.concatenate([src, jnp.zeros((batch, new), bool)], axis=1)
        x = jnp.where(maskable, mask_id, canvas)
    else:
        maskable = canvas == mask_id
        x = canvas
    prompt = x != mask_id
    if gen.token_hook is not None:
        x = gen.token_hook(None, x, None)
    pending = maskable if gen.transfer_mode == "diffullama" else x == mask_id
    ctx = Context(gen, prompt_len, canvas, maskable, jnp.asarray(_schedule(gen)), config.logit_shift)
    step_fn = make_step(params, config, gen, ctx, attention_mask, rng, prompt)
    history = jnp.zeros((gen.steps if gen.output_history else 0, *x.shape), x.dtype)
    carry = jnp.zeros((batch,), jnp.int32)
    state = SamplerState(x, pending, jnp.int32(0), jnp.zeros((batch,), jnp.int32), carry, history)

    def keep_going(s: SamplerState) -> jax.Array:
        more = s.step < gen.steps
        return more if gen.has_hooks else more & jnp.any(s.pending)

    state = jax.lax.while_loop(keep_going, step_fn, state)
    history = None
    if gen.output_history:  # steps skipped after every row finished leave the canvas unchanged
        done = jnp.arange(gen.steps)[:, None, None] >= state.step
        history = jnp.where(done, state.x[None], state.history)
    decoded = jnp.sum(pending, axis=1) / jnp.maximum(state.nfe // passes, 1)
    return GenerateOutput(state.x, history, state.nfe, decoded.astype(jnp.float32), state.nfe.astype(jnp.float32))


def generate(
    params: Any,
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    gen_config: GenerateConfig,
    rng: jax.Array,
    src_mask: jax.Array | None = None,
) -> GenerateOutput:
    """Run the whole reverse process in one compiled call (cached per `config`/`gen_config`).

    `input_ids` [B, P] (left-padded; `attention_mask` [B, P] 1 = token, or None for no padding);
    the canvas is the prompt followed by `max_new_tokens` mask tokens, and masks inside the prompt
    are decoded too. `src_mask` [B, P] (DiffuLLaMA only): positions that are never masked; every
    other position starts masked. `rng`: a `jax.random` key (used only when sampling).

    Example:
        >>> config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                      intermediate_size=64, mask_token_id=63)
        >>> params = decoder.init(jax.random.key(0), config)
        >>> gen = GenerateConfig(max_new_tokens=4, steps=4, alg="entropy")
        >>> out = generate(params, config, jnp.array([[1, 2, 3]]), None, gen, jax.random.key(0))
        >>> out.sequences.shape, out.nfe.tolist()
        ((1, 7), [4])
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, length >= 1], got shape {input_ids.shape}")
    total = input_ids.shape[1] + gen_config.max_new_tokens
    if total > config.max_position_embeddings:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {gen_config.max_new_tokens} = {total} exceeds "
            f"the model context max_position_embeddings={config.max_position_embeddings}"
        )
    if gen_config.vocab_limit is not None and gen_config.vocab_limit > config.vocab_size:
        raise ValueError(f"vocab_limit={gen_config.vocab_limit} must be <= vocab_size={config.vocab_size}")
    config.require_mask_token()
    if gen_config.blockwise and gen_config.cache != "none" and config.attention_mode != "bidirectional":
        raise ValueError(f"cache={gen_config.cache!r} needs a bidirectional model, not "
                         f"attention_mode={config.attention_mode!r}; use cache='none'")
    if gen_config.early_exit:
        stop_ids(config)
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
    if src_mask is not None:
        if gen_config.transfer_mode != "diffullama":
            raise ValueError(f"src_mask is only used by alg='diffullama', not alg={gen_config.alg!r}")
        src_mask = jnp.asarray(src_mask, bool)
        if src_mask.shape != input_ids.shape:
            raise ValueError(f"src_mask shape {src_mask.shape} != input_ids shape {input_ids.shape}")
    return _generate(params, input_ids, attention_mask, src_mask, rng, config=config, gen=gen_config)
