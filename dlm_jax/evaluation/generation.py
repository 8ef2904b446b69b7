"""Batched diffusion generation for evaluation: left-padded prompts in, decoded continuations out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlm_jax.sampling.config import KNOBS, UNSET, resolve_alg, resolve_top_k
from dlm_jax.sampling.frontend import PUBLIC, canonical_settings, left_pad, sampler_config
from dlm_jax.sampling.results import cut_at_until

RECORDED = tuple(name for name in PUBLIC if name in KNOBS)  # every knob a user can set from text


def effective_sampler(sampler: Mapping[str, Any]) -> dict[str, Any]:
    """The settings generation runs with, as recorded in results: every public knob at its effective value.

    `sampler` holds the knobs (or aliases, e.g. `remasking`) that were set; the others take
    `GenerateConfig`'s defaults, resolved per call as the sampler resolves them: `alg` unset is
    `low_confidence` with a `block_length`, else `origin`; `top_k` unset is Dream's effective 50 for
    Dream's algs (none otherwise) and `top_k=None` turns the filter off; `steps` unset is
    `max_new_tokens` (null while that is the task's own).

    Example:
        >>> effective_sampler({"alg": "entropy"})["top_k"]
        50
        >>> effective_sampler({"alg": "entropy", "top_k": None})["top_k"] is None
        True
        >>> effective_sampler({"block_length": 8})["alg"], effective_sampler({"max_new_tokens": 16})["steps"]
        ('low_confidence', 16)
    """
    settings = canonical_settings(sampler)
    alg = resolve_alg(settings.get("alg"), settings.get("block_length"))
    out = {name: settings.get(name, KNOBS[name].default) for name in RECORDED}
    out["alg"] = alg
    out["top_k"] = resolve_top_k(settings.get("top_k", UNSET), alg)
    out["steps"] = out["steps"] or out["max_new_tokens"]
    out["suppress_tokens"] = list(out["suppress_tokens"])
    return out


def generate_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampler: dict[str, Any],
    batch_size: int = 8,
    seed: int = 0,
    stops: Sequence[str] = (),
) -> list[str]:
    """Decode `max_new_tokens` continuations of token-id prompts with `model.diffusion_generate`.

    Everything from the first EOS token on is dropped, then the text is cut at `stops`. Batch k
    uses seed `seed + k`.

    Example:
        >>> from dlm_jax.api import DiffusionLM
        >>> from dlm_jax.data.tokenizer import SimpleTokenizer
        >>> from dlm_jax.models.config import ModelConfig
        >>> tok = SimpleTokenizer.build(["0123456789+="], level="char")
        >>> model = DiffusionLM.init(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                                      intermediate_size=64, mask_token_id=tok.mask_id))
        >>> texts = generate_continuations(model, tok, [tok.encode("2+3="), tok.encode("12+1=")],
        ...                                max_new_tokens=4, sampler={"steps": 4, "alg": "entropy"})
        >>> len(texts), all(len(text) <= 4 for text in texts)  # one text per prompt; untrained: noise
        (2, True)
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    limit = model.config.max_position_embeddings
    for i, p in enumerate(prompts):
        if len(p) + max_new_tokens > limit:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} it exceeds the context "
                f"(max_position_embeddings={limit})"
            )
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_id
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_id
    gen = sampler_config(model.config, None, {**sampler, "max_new_tokens": max_new_tokens})
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for k, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], pad_id, 16, limit - max_new_tokens)
        res = model.diffusion_generate(ids, mask, gen, seed=seed + k)
        new = np.asarray(res.sequences)[:, ids.shape[1] :]
        for row, i in enumerate(idx):
            toks = [int(t) for t in new[row]]
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos)]
            out[i] = cut_at_until(tokenizer.decode(toks), stops)
    return out
