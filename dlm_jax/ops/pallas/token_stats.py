"""Fused sampling statistics over vocabulary blocks (Pallas, TPU Mosaic; interpret mode on CPU).

For each row of logits [N, V] the kernel streams vocabulary blocks and keeps, per row, the running
max, second max, first argmax, the softmax denominator (online rescaling), and for sampling the
running Gumbel-max winner. A second sweep (only when negative entropy is requested) accumulates
sum p*log(p + 1e-10) with the final log-sum-exp, so the entropy matches Dream's formula exactly
rather than an approximation. No [N, V] probability tensor is ever written: HBM traffic is one
read of the logits per sweep plus O(N) outputs.

Dream's top-p/top-k filters enter as a per-row cutoff (`filter_cutoff`: two numbers per row from an
XLA pre-pass, `lax.top_k` for top-k, one sort per row for top-p as in Dream); the kernel sets the
logits below it to `FILL` in each vocabulary block before any statistic, which is what the
reference's filtered [N, V] copy holds.

Grid: (row blocks, sweeps, vocab blocks); the vocabulary axis is the reduction ("arbitrary").
A ragged last vocabulary block is masked by column index; ragged rows are dropped on write.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from dlm_jax.ops.pallas.common import NUM_LANES, NUM_SUBLANES, check_block, fit_block, resolve_interpret
from dlm_jax.ops.stats_common import (
    ENTROPY_EPS,
    TokenStats,
    apply_cutoff,
    filter_cutoff,
    gumbel_from_counters,
    inverse_temperature,
    key_to_seed,
    uses_top_p,
)

_NO_INDEX = 2**31 - 1


def _first_argmax(values, cols):
    """(max, first column attaining it) along axis 1, kept [rows, 1]."""
    best = jnp.max(values, axis=1, keepdims=True)
    idx = jnp.min(jnp.where(values == best, cols, _NO_INDEX), axis=1, keepdims=True)
    return best, idx


def _kernel(
    inv_t_ref, seed_ref, rows_ref, cut_v_ref, cut_c_ref, x_ref, tok_ref, stats_ref, m1, m2, idx, den, gmax, gidx,
    zsel, ent, *, vocab, br, bv, sample, sweeps, filtered,
):  # fmt: skip
    sweep, j = pl.program_id(1), pl.program_id(2)
    cols = jax.lax.broadcasted_iota(jnp.int32, (br, bv), 1) + j * bv
    in_vocab = cols < vocab
    z = x_ref[...].astype(jnp.float32) * inv_t_ref[0]
    if filtered:
        z = apply_cutoff(z, cut_v_ref[...], cut_c_ref[...], cols)
    z = jnp.where(in_vocab, z, -jnp.inf)

    @pl.when((sweep == 0) & (j == 0))
    def _init():
        for ref, value in ((m1, -jnp.inf), (m2, -jnp.inf), (den, 0.0), (gmax, -jnp.inf), (zsel, 0.0), (ent, 0.0)):
            ref[...] = jnp.full(ref.shape, value, jnp.float32)
        idx[...] = jnp.zeros(idx.shape, jnp.int32)
        gidx[...] = jnp.zeros(gidx.shape, jnp.int32)

    @pl.when(sweep == 0)
    def _statistics():
        b1, bidx = _first_argmax(z, cols)
        b2 = jnp.max(jnp.where(cols == bidx, -jnp.inf, z), axis=1, keepdims=True)
        m_old = m1[...]
        m_new = jnp.maximum(m_old, b1)
        m2[...] = jnp.maximum(jnp.minimum(m_old, b1), jnp.maximum(m2[...], b2))
        idx[...] = jnp.where(b1 > m_old, bidx, idx[...])
        m_ref = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # a block of only -inf logits so far adds 0, not NaN
        den[...] = den[...] * jnp.exp(m_old - m_ref) + jnp.sum(jnp.exp(z - m_ref[:, :1]), axis=1, keepdims=True)
        m1[...] = m_new
        if sample:
            zg = jnp.where(in_vocab, z + gumbel_from_counters(seed_ref, rows_ref[...], cols), -jnp.inf)
            gb, gbidx = _first_argmax(zg, cols)
            win = gb > gmax[...]
            zb = jnp.sum(jnp.where(cols == gbidx, z, 0.0), axis=1, keepdims=True)
            zsel[...] = jnp.where(win, zb, zsel[...])
            gidx[...] = jnp.where(win, gbidx, gidx[...])
            gmax[...] = jnp.where(win, gb, gmax[...])

    if sweeps == 2:

        @pl.when(sweep == 1)
        def _entropy():
            p = jnp.exp(z - m1[...][:, :1]) / den[...][:, :1]  # as softmax does it: exp(z - max) / sum
            ent[...] += jnp.sum(jnp.where(in_vocab, p * jnp.log(p + ENTROPY_EPS), 0.0), axis=1, keepdims=True)

    @pl.when((sweep == sweeps - 1) & (j == pl.num_programs(2) - 1))
    def _finish():
        inv_den = 1.0 / den[...]
        top = m1[...]
        token = gidx[...] if sample else idx[...]
        chosen = zsel[...] if sample else top
        prob = jnp.exp(chosen - top) * inv_den
        margin = (1.0 - jnp.exp(m2[...] - top)) * inv_den
        lane = jax.lax.broadcasted_iota(jnp.int32, (br, NUM_LANES), 1)
        tok_ref[...] = jnp.broadcast_to(token[:, :1], (br, NUM_LANES))
        stats = jnp.where(lane == 0, prob[:, :1], jnp.where(lane == 1, margin[:, :1], ent[...][:, :1]))
        stats_ref[...] = stats


def pallas_token_stats(
    logits: jax.Array,
    *,
    temperature: float | jax.Array | None = None,
    key: jax.Array | None = None,
    with_entropy: bool = True,
    rows: jax.Array | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    block_rows: int = 32,
    block_vocab: int = 2048,
    interpret: bool | None = None,
) -> TokenStats:
    """`xla_token_stats` computed in vocabulary blocks; same arguments and results.

    `with_entropy=False` skips the second sweep over the logits (neg_entropy is then 0).
    `rows`: the rows' numbers for the sampling noise (default 0, 1, 2, ...), as in `xla_token_stats`.
    `top_p` (< 1) / `top_k`: Dream's filters, applied in the kernel from a per-row `filter_cutoff`.
    `block_rows` (multiple of 8) x `block_vocab` (multiple of 128) is the tile held in VMEM.

    Example:
        >>> s = pallas_token_stats(jnp.zeros((2, 3, 5)))
        >>> s.token.shape, round(float(s.prob[0, 0]), 4)
        ((2, 3), 0.2)
    """
    check_block("block_rows", block_rows, NUM_SUBLANES)
    check_block("block_vocab", block_vocab, NUM_LANES)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, vocab)
    n = x.shape[0]
    br = fit_block(block_rows, n, NUM_SUBLANES)
    bv = fit_block(block_vocab, vocab, NUM_LANES)
    sweeps = 2 if with_entropy else 1
    sample = key is not None
    seed = key_to_seed(key) if sample else jnp.zeros((2,), jnp.uint32)
    inv_t = inverse_temperature(temperature).reshape(1)
    row_ids = jnp.arange(n, dtype=jnp.int32) if rows is None else jnp.asarray(rows).astype(jnp.int32).reshape(n)
    filtered = uses_top_p(top_p) or top_k is not None
    if filtered:
        cut_v, cut_c = filter_cutoff(x.astype(jnp.float32) * inv_t[0], top_p, top_k)
    else:
        cut_v, cut_c = jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32)
    row_spec = pl.BlockSpec((br, 1), lambda i, s, j: (i, 0))
    row_stat = pltpu.VMEM((br, NUM_LANES), jnp.float32)
    row_idx = pltpu.VMEM((br, NUM_LANES), jnp.int32)
    smem = pl.BlockSpec(memory_space=pltpu.SMEM)
    out_spec = pl.BlockSpec((br, NUM_LANES), lambda i, s, j: (i, 0))
    logits_spec = pl.BlockSpec((br, bv), lambda i, s, j: (i, j))
    compiler = {}
    if resolve_interpret(interpret):
        compiler["interpret"] = True
    else:
        compiler["compiler_params"] = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary"))
    tok, stats = pl.pallas_call(
        functools.partial(_kernel, vocab=vocab, br=br, bv=bv, sample=sample, sweeps=sweeps, filtered=filtered),
        grid=(pl.cdiv(n, br), sweeps, pl.cdiv(vocab, bv)),
        in_specs=[smem, smem, row_spec, row_spec, row_spec, logits_spec],
        out_specs=[out_spec, out_spec],
        out_shape=[
            jax.ShapeDtypeStruct((n, NUM_LANES), jnp.int32),
            jax.ShapeDtypeStruct((n, NUM_LANES), jnp.float32),
        ],
        scratch_shapes=[row_stat, row_stat, row_idx, row_stat, row_stat, row_idx, row_stat, row_stat],
        **compiler,
    )(inv_t, seed, row_ids[:, None], cut_v[:, None], cut_c[:, None], x)
    return TokenStats(
        tok[:, 0].reshape(lead),
        stats[:, 0].reshape(lead),
        stats[:, 1].reshape(lead),
        stats[:, 2].reshape(lead),
    )
