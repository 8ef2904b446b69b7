"""Block-wise decoding (Fast-dLLM / EB-Sampler / Streaming-dLLM): one step function, one `lax.while_loop`.

The generation is decoded one `block_length` block at a time, left to right, all rows on the same block.
Each step computes the hidden states of the rows that feed the block's logits (for a shifted model the
row before each position) and the head and statistics on those rows only, then commits positions of the
block by the alg's count (`steps / blocks` steps per block) or by a parallel rule (`parallel.py`).
The trunk runs, per `cache`:

- "none": on the whole canvas every step.
- "prefix": at a block's first step the whole canvas fills a K/V cache; every step then runs the rows from
  the block to the end (at a few static sizes, or up to `suffix_window` past the block) against the
  cached K/V of the rows before them.
- "dual": as "prefix", but a step runs only the block's rows (plus the row before it when shifted), the
  masked suffix's K/V coming from the cache too.

A block's first step takes its logits from the refresh's full forward, as Fast-dLLM does; its later steps
from the window against the cache (a window's fresh K/V serve its own step only). `cache_refresh="step"`
refreshes at every step, which makes the cached modes compute the same numbers as "none".

`suffix_window=W` hides keys more than W past the block; `early_exit` ends a row once its finished blocks
hold an EOS (or pad) token and fills the rest of its canvas with it. With the alg's count a block takes
`steps / blocks` steps (as LLaDA's blocks); with a parallel rule it ends as soon as every row has decoded
it, and the mask id is never predicted (it would stall the block). Masks inside the prompt are not
decoded here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.models import cached, decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.ops.token_stats import TokenStats
from dlm_jax.sampling.algorithms import top_count
from dlm_jax.sampling.config import GenerateConfig
from dlm_jax.sampling.parallel import entropy_budget_rule, factor_rule, threshold_rule
from dlm_jax.sampling.rows import guided_logits
from dlm_jax.sampling.schedules import dream_transfer_count, dream_transfer_fractions, llada_transfer_count
from dlm_jax.sampling.stats import forbid_ids, position_stats

NUM_PREFIX_SIZES = 4  # static window sizes of the prefix cache's steps (compile time grows with it)


class BlockState(NamedTuple):
    x: jax.Array  # [B, L] canvas
    pending: jax.Array  # [B, L] bool, positions still to decode
    step: jax.Array  # int32 scalar, steps done
    block: jax.Array  # int32 scalar, the current block
    block_step: jax.Array  # int32 scalar, steps done in the current block
    nfe: jax.Array  # [B] int32 model calls
    equiv: jax.Array  # [B] float32 full-sequence forward equivalents
    carry: jax.Array  # [B] int32, LLaDA's per-block budget
    cache: Any  # KVCache of every branch's rows, or None
    history: jax.Array  # [cap, B, L] or [0, B, L]


def step_cap(gen: GenerateConfig) -> int:
    """The most steps block-wise decoding can take: `steps` for the alg's count, one per token for a rule."""
    return gen.steps if gen.parallel_rule is None else gen.max_new_tokens


def forward_cost(config: ModelConfig, rows: int, keys: int, length: int) -> float:
    """FLOPs of the trunk on `rows` query rows against `keys` keys, in forwards over the whole `length` canvas.

    Per layer a row costs its projections and MLP, a (row, key) pair its scores and weighted sum; the
    head is left out (every sampler runs it only on the rows it reads).

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
        >>> forward_cost(cfg, 10, 10, 10), round(forward_cost(cfg, 5, 10, 10), 3)
        (1.0, 0.5)
    """
    d, hd, h, kvh = config.hidden_size, config.head_dim, config.num_heads, config.num_kv_heads
    mats = 3 if config.mlp_kind == "swiglu" else 2
    per_row = 2 * (d * hd * (h + 2 * kvh) + h * hd * d + mats * d * config.intermediate_size)
    per_pair = 4 * h * hd
    return (rows * per_row + rows * keys * per_pair) / (length * per_row + length * length * per_pair)


def _window_sizes(gen: GenerateConfig, prompt_len: int, length: int, shift: int) -> tuple[int, ...]:
    """Static query-window sizes of the cached steps, largest first (dual: one)."""
    block = gen.block_size
    if gen.cache == "dual":
        return (block + shift,)
    needs = []
    for b in range(gen.max_new_tokens // block):
        need = length - (prompt_len + b * block - shift)
        needs.append(need if gen.suffix_window is None else min(need, block + shift + gen.suffix_window))
    picks = np.unique(np.linspace(0, len(needs) - 1, NUM_PREFIX_SIZES).round().astype(int))
    return tuple(sorted({needs[i] for i in picks}, reverse=True))


def _count_commit(gen: GenerateConfig, stats: TokenStats, pending, block_step, key, carry):
    """The alg's own rule inside the block: Dream's `1 - s/t` count or LLaDA's even split over the block's steps."""
    per_block = gen.steps // (gen.max_new_tokens // gen.block_size)
    if gen.transfer_mode == "llada":
        budget = jnp.where(block_step == 0, jnp.sum(pending, axis=1).astype(jnp.int32), carry)
        count = llada_transfer_count(budget, block_step, per_block)
        conf = stats.prob if gen.alg == "low_confidence" else jax.random.uniform(key, pending.shape)
        return pending & top_count(jnp.where(pending, conf, -jnp.inf), count), budget
    fraction = jnp.asarray(dream_transfer_fractions(per_block, gen.eps))[block_step]
    if gen.alg == "origin":
        return pending & (jax.random.uniform(key, pending.shape) < fraction), carry
    last = block_step == per_block - 1
    count = dream_transfer_count(jnp.sum(pending, axis=1), fraction, last, per_row=gen.per_row_count)
    scores = jnp.where(pending, _confidence(gen, stats), -jnp.inf)
    if gen.alg_temp:
        scores = scores / jnp.float32(gen.alg_temp) + jax.random.gumbel(key, scores.shape)
    return pending & top_count(scores, count), carry


def _confidence(gen: GenerateConfig, stats: TokenStats) -> jax.Array:
    return {"topk_margin": stats.margin, "entropy": stats.neg_entropy}.get(gen.alg, stats.prob)


def commit(gen: GenerateConfig, stats: TokenStats, pending, block_step, key, carry):
    """Boolean [B, n]: the block positions (of `pending` [B, n]) committed this step, and the new carry."""
    if gen.threshold is not None:
        return threshold_rule(stats.prob, pending, gen.threshold), carry
    if gen.factor is not None:
        return factor_rule(stats.prob, pending, gen.factor), carry
    if gen.entropy_budget is not None:
        return entropy_budget_rule(_confidence(gen, stats), -stats.neg_entropy, pending, gen.entropy_budget), carry
    return _count_commit(gen, stats, pending, block_step, key, carry)


def stop_ids(config: ModelConfig) -> tuple[int, ...]:
    """The ids that end a row under `early_exit`: the model's EOS and pad ids (the first fills the rest)."""
    ids = tuple(dict.fromkeys(i for i in (config.eos_token_id, config.pad_token_id)
                              if i is not None and i != config.mask_token_id))
    if not ids:
        raise ValueError("early_exit needs the model config's eos_token_id (or pad_token_id)")
    return ids


def generate_blocks(params, config: ModelConfig, gen: GenerateConfig, input_ids, attention_mask, rng):
    """Block-wise reverse process (traced inside `loop._generate`): (canvas, history, nfe, equivalents)."""
    mask_id = config.require_mask_token()
    batch, prompt_len = input_ids.shape
    block = gen.block_size
    length = prompt_len + gen.max_new_tokens
    shift = 1 if config.logit_shift else 0
    passes = 2 if gen.cfg_scale > 0 else 1
    cap = step_cap(gen)
    stop = jnp.asarray(stop_ids(config)) if gen.early_exit else None
    cols = jnp.arange(length)
    canvas = jnp.concatenate([input_ids, jnp.full((batch, gen.max_new_tokens), mask_id, input_ids.dtype)], axis=1)
    full_mask = None
    if attention_mask is not None:
        full_mask = jnp.concatenate([attention_mask, jnp.ones((batch, gen.max_new_tokens), attention_mask.dtype)], 1)
    valid = jnp.ones((batch, length), bool) if full_mask is None else full_mask.astype(bool)
    positions = decoder.default_position_ids(canvas, full_mask)
    prompt = canvas != mask_id

    def tile(a: jax.Array) -> jax.Array:
        return jnp.concatenate([a] * passes, axis=0)

    def branch_ids(x: jax.Array) -> jax.Array:
        return jnp.concatenate([x, jnp.where(prompt, mask_id, x)], axis=0) if passes == 2 else x

    def key_valid(start: jax.Array) -> jax.Array:
        if gen.suffix_window is None:
            return tile(valid)
        return tile(valid & (cols < start + block + gen.suffix_window)[None])

    def hidden_full(x: jax.Array, start: jax.Array) -> jax.Array:
        bias = None if gen.suffix_window is None else key_valid(start)[:, None, None, :]
        mask = None if full_mask is None else tile(full_mask)
        hidden = decoder.apply(params, branch_ids(x), mask, attention_bias=bias, config=config, return_hidden=True)
        return jax.lax.dynamic_slice_in_dim(hidden, start - shift, block, axis=1)

    sizes = _window_sizes(gen, prompt_len, length, shift) if gen.cache != "none" else ()
    full_cost = float(passes)
    window_costs = jnp.asarray([passes * forward_cost(config, s, length, length) for s in sizes], jnp.float32)

    def refresh(x: jax.Array, start: jax.Array, cache: cached.KVCache) -> tuple[jax.Array, cached.KVCache]:
        """The whole canvas through the trunk: the block's hidden states and a cache filled from scratch."""
        hidden, cache = cached.forward_rows(params, config, branch_ids(x), tile(positions), 0, tile(valid),
                                            key_valid(start), cache)
        return jax.lax.dynamic_slice_in_dim(hidden, start - shift, block, axis=1), cache

    def window(size: int):
        def run(x, start, cache):
            first = jnp.minimum(start - shift, length - size)
            take = lambda a: jax.lax.dynamic_slice_in_dim(a, first, size, axis=1)  # noqa: E731
            hidden, _ = cached.forward_rows(params, config, take(branch_ids(x)), take(tile(positions)), first,
                                            take(tile(valid)), key_valid(start), cache)
            return jax.lax.dynamic_slice_in_dim(hidden, start - shift - first, block, axis=1)

        return run

    def cached_window(x: jax.Array, start: jax.Array, cache: cached.KVCache):
        """The window of rows from the block on, against the cache: the block's hidden states and the cost."""
        if len(sizes) == 1:
            return window(sizes[0])(x, start, cache), window_costs[0]
        need = length - (start - shift)
        if gen.suffix_window is not None:
            need = jnp.minimum(need, block + shift + gen.suffix_window)
        pick = jnp.sum(jnp.asarray(sizes) >= need) - 1  # the smallest size that covers the rows needed
        return jax.lax.switch(pick, [window(s) for s in sizes], x, start, cache), window_costs[pick]

    def block_hidden(state: BlockState, start: jax.Array):
        """Hidden states [passes * B, block, D] of the rows feeding the block, the cache, the step's cost."""
        if gen.cache == "none":
            return hidden_full(state.x, start), None, jnp.float32(full_cost)
        if gen.cache_refresh == "step":
            return *refresh(state.x, start, state.cache), jnp.float32(full_cost)

        def refreshed(x, cache):
            return *refresh(x, start, cache), jnp.float32(full_cost)

        def reused(x, cache):
            hidden, cost = cached_window(x, start, cache)
            return hidden, cache, cost

        return jax.lax.cond(state.block_step == 0, refreshed, reused, state.x, state.cache)

    def block_stats(hidden: jax.Array, start: jax.Array, key: jax.Array) -> TokenStats:
        flat = hidden.reshape(passes, batch * block, hidden.shape[-1])
        logits = forbid_ids(guided_logits(params, config, gen, flat), gen, mask_id)
        if gen.parallel_rule is not None:  # a committed mask id would stay masked and stall the block
            logits = logits.at[:, mask_id].set(-jnp.inf)
        rows = (jnp.arange(batch)[:, None] * length + start - shift + jnp.arange(block)[None]).reshape(-1)
        stats = position_stats(logits, gen, key, impl=config.sampling_impl, rows=rows.astype(jnp.uint32))
        return jax.tree.map(lambda v: v.reshape(batch, block), stats)

    def step_fn(state: BlockState) -> BlockState:
        i = state.step
        start = prompt_len + state.block * block
        token_key, rule_key = jax.random.split(jax.random.fold_in(rng, i))
        hidden, cache, cost = block_hidden(state, start)
        stats = block_stats(hidden, start, token_key)
        pending_block = jax.lax.dynamic_slice_in_dim(state.pending, start, block, axis=1)
        transfer, carry = commit(gen, stats, pending_block, state.block_step, rule_key, state.carry)
        x_block = jax.lax.dynamic_slice_in_dim(state.x, start, block, axis=1)
        x_block = jnp.where(transfer, stats.token.astype(state.x.dtype), x_block)
        x = jax.lax.dynamic_update_slice_in_dim(state.x, x_block, start, axis=1)
        left = pending_block & (x_block == mask_id)  # a predicted mask id stays masked, as in Dream and LLaDA
        pending = jax.lax.dynamic_update_slice_in_dim(state.pending, left, start, axis=1)
        block_done = ~jnp.any(left, axis=1)
        if gen.early_exit:
            finished = jnp.isin(x, stop) & (cols >= prompt_len)[None] & (cols < start + block)[None]
            leave = block_done & jnp.any(finished, axis=1)
            x = jnp.where(pending & leave[:, None], stop[0].astype(x.dtype), x)
            pending = pending & ~leave[:, None]
        active = jnp.any(state.pending, axis=1)
        nfe = state.nfe + passes * active.astype(jnp.int32)
        equiv = state.equiv + cost * active.astype(jnp.float32)
        if gen.parallel_rule is None:  # the alg's schedule: `per_block` steps per block, as LLaDA
            advance = state.block_step + 1 == gen.steps // (gen.max_new_tokens // block)
        else:
            advance = jnp.all(block_done)
        history = state.history
        if gen.output_history:
            history = jax.lax.dynamic_update_index_in_dim(history, x, i, axis=0)
        if gen.step_callback is not None:
            jax.debug.callback(gen.step_callback, i, x)
        return BlockState(x, pending, i + 1, state.block + advance.astype(jnp.int32),
                          jnp.where(advance, 0, state.block_step + 1), nfe, equiv, carry, cache, history)

    cache = None
    if gen.cache != "none":
        cache = cached.empty_cache(config, passes * batch, length)
    history = jnp.zeros((cap if gen.output_history else 0, batch, length), canvas.dtype)
    pending = (canvas == mask_id) & (cols >= prompt_len)[None]
    zeros = jnp.zeros((batch,), jnp.int32)
    state = BlockState(canvas, pending, jnp.int32(0), jnp.int32(0), jnp.int32(0), zeros,
                       jnp.zeros((batch,), jnp.float32), zeros, cache, history)
    state = jax.lax.while_loop(lambda s: (s.step < cap) & jnp.any(s.pending), step_fn, state)
    history = None
    if gen.output_history:
        done = jnp.arange(cap)[:, None, None] >= state.step
        history = jnp.where(done, state.x[None], state.history)
    return state.x, history, state.nfe, state.equiv
