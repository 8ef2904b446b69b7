"""The user-facing call: Dream / LLaDA / DiffuLLaMA keyword forms -> `GenerateConfig` -> numpy results.

Also the front ends' shared pieces: the settable names (`SETTINGS`: knobs and their aliases), their
parsing from text, and left-padding of prompts."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dlm_jax.models.config import ModelConfig
from dlm_jax.sampling.config import (
    KNOBS,
    LLADA_ALGS,
    UNSET,
    GenerateConfig,
    Knob,
    parse_bool,
    resolve_alg,
    resolve_top_k,
)
from dlm_jax.sampling.loop import generate
from dlm_jax.sampling.results import GenerationResult, completions, decode_texts

# Keywords of `DiffusionLM.diffusion_generate` that are not sampler knobs: how the call is run and read.
CALL_OPTIONS = ("seed", "src_mask", "tokenizer", "until")


def _parse_remasking(value: Any) -> str:
    if str(value) not in LLADA_ALGS:
        raise ValueError(f"expected one of {', '.join(LLADA_ALGS)}")
    return str(value)


# Other names that set a knob: LLaDA's `remasking` (selects its algs), `suppress_eos` (adds the model's EOS
# to suppress_tokens) and Dream's hook names.
ALIASES: dict[str, Knob] = {
    "remasking": Knob("remasking", f"LLaDA's name for alg: {' | '.join(LLADA_ALGS)}", None, "none",
                      _parse_remasking, "alg"),
    "suppress_eos": Knob("suppress_eos", "never predict the model's EOS token", False, "false", parse_bool,
                         "suppress_tokens"),
    "generation_tokens_hook_func": Knob("generation_tokens_hook_func", "Dream's name for token_hook", None, "none",
                                        None, "token_hook"),
    "generation_logits_hook_func": Knob("generation_logits_hook_func", "Dream's name for logits_hook", None,
                                        "none", None, "logits_hook"),
}
SETTINGS: dict[str, Knob] = {**KNOBS, **ALIASES}
PUBLIC: tuple[str, ...] = tuple(name for name, k in SETTINGS.items() if k.parse is not None)  # flags, model_args


def check_names(given: Iterable[str], known: Iterable[str], what: str, error: type[Exception] = ValueError) -> None:
    """Refuse names outside `known` in one error naming each, with the closest known names.

    Example:
        >>> check_names(["tmperature"], SETTINGS, "diffusion_generate keyword")
        Traceback (most recent call last):
        ValueError: unknown diffusion_generate keyword 'tmperature' (did you mean temperature?)
    """
    known = list(known)
    bad = [name for name in given if name not in known]
    if not bad:
        return
    parts = []
    for name in bad:
        close = difflib.get_close_matches(name, known, n=3)
        parts.append(f"{name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    plural = "s" if len(bad) > 1 else ""
    raise error(f"unknown {what}{plural} {', '.join(parts)}")


def parse_settings(raw: Mapping[str, Any], label: Callable[[str, Any], str]) -> dict[str, Any]:
    """Text (or values) of public knobs -> values, through each knob's parser. A bad value raises one
    ValueError starting with `label(name, value)`, e.g. `--top-k '-3': expected an integer >= 1, ...`."""
    out = {}
    for name, value in raw.items():
        try:
            out[name] = SETTINGS[name].parse(value)
        except ValueError as e:
            raise ValueError(f"{label(name, value)}: {e}") from None
    return out


def canonical_settings(raw: Mapping[str, Any], eos_token_id: int | None = None) -> dict[str, Any]:
    """Settings keyed by `GenerateConfig` field: aliases (`remasking`, `suppress_eos`, Dream's hook names)
    mapped onto their fields. Unset knobs stay absent (`alg` may be None: resolved by `build_config`)."""
    check_names(raw, SETTINGS, "sampler setting")
    out = {name: value for name, value in raw.items() if name in KNOBS}
    remasking = raw.get("remasking")
    if remasking is not None:
        if raw.get("alg") is not None:
            raise ValueError(f"pass either alg={raw['alg']!r} (Dream/DiffuLLaMA) or remasking={remasking!r} (LLaDA), "
                             "not both")
        try:
            out["alg"] = _parse_remasking(remasking)
        except ValueError as e:
            raise ValueError(f"remasking={remasking!r}: {e}") from None
    if raw.get("suppress_eos"):
        if eos_token_id is None:
            raise ValueError("suppress_eos=True but the model config has no eos_token_id")
        out["suppress_tokens"] = (*out.get("suppress_tokens", ()), eos_token_id)
    for name in ("generation_tokens_hook_func", "generation_logits_hook_func"):
        if raw.get(name) is not None:
            out[ALIASES[name].field] = raw[name]
    return out


def build_config(settings: Mapping[str, Any]) -> GenerateConfig:
    """The `GenerateConfig` of canonical settings, with the per-call defaults of `alg` and `top_k` applied.

    Example:
        >>> build_config({"max_new_tokens": 8, "alg": "entropy"}).top_k, build_config({"max_new_tokens": 8}).alg
        (50, 'origin')
    """
    alg = resolve_alg(settings.get("alg"), settings.get("block_length"))
    top_k = resolve_top_k(settings.get("top_k", UNSET), alg)
    return GenerateConfig(**{**settings, "alg": alg, "top_k": top_k})


def sampler_config(
    model_config: ModelConfig, gen: GenerateConfig | None, settings: Mapping[str, Any]
) -> GenerateConfig:
    """`gen` with `settings` (knobs or aliases) replaced, or, without `gen`, the config `settings` describe."""
    fields = canonical_settings(settings, model_config.eos_token_id)
    if gen is None:
        return build_config(fields)
    if not isinstance(gen, GenerateConfig):
        raise TypeError(f"gen must be a GenerateConfig, got {type(gen).__name__}")
    if "alg" in fields:
        fields["alg"] = resolve_alg(fields["alg"], fields.get("block_length", gen.block_length))
    if "top_k" in fields:
        fields["top_k"] = resolve_top_k(fields["top_k"], fields.get("alg", gen.alg))
    return gen.replace(**fields) if fields else gen


def prepare_call(
    model_config: ModelConfig, gen: GenerateConfig | None, keywords: Mapping[str, Any]
) -> tuple[GenerateConfig, dict[str, Any]]:
    """`diffusion_generate`'s keywords split into the sampler config and the call options (`CALL_OPTIONS`)."""
    check_names(keywords, (*SETTINGS, *CALL_OPTIONS), "diffusion_generate keyword", TypeError)
    options = {name: keywords[name] for name in CALL_OPTIONS if name in keywords}
    settings = {name: value for name, value in keywords.items() if name not in options}
    return sampler_config(model_config, gen, settings), options


def check_token_ids(ids: Any, vocab_size: int, what: str = "input_ids") -> np.ndarray:
    """`ids` as an int numpy array, refusing any id outside `[0, vocab_size)` (the embedding would read garbage).

    Example:
        >>> check_token_ids([[1, 2, 300]], 300)
        Traceback (most recent call last):
        ValueError: input_ids: token id 300 is outside the vocabulary (size 300, ids 0..299)
    """
    arr = np.asarray(ids)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer token ids, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= vocab_size)] if arr.size else arr
    if bad.size:
        raise ValueError(
            f"{what}: token id {int(bad.flat[0])} is outside the vocabulary "
            f"(size {vocab_size}, ids 0..{vocab_size - 1})"
        )
    return arr


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 1, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[B, P] int32 ids and attention mask, left-padded to the longest prompt, rounded up to `multiple` (fewer
    recompiles) but not past `limit` (never below the longest prompt).

    Example:
        >>> left_pad([[5, 6], [7]], pad_id=0, multiple=4)[0].tolist()
        [[0, 0, 5, 6], [0, 0, 0, 7]]
    """
    longest = max(len(p) for p in prompts)
    width = -(-longest // multiple) * multiple
    if limit is not None:
        width = max(longest, min(width, limit))
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def run(
    params: Any,
    model_config: ModelConfig,
    input_ids: Any,
    attention_mask: Any | None,
    gen: GenerateConfig,
    *,
    seed: int = 0,
    src_mask: Any | None = None,
    tokenizer: Any | None = None,
    until: Sequence[str] | None = None,
    call: Callable[..., Any] | None = None,
) -> GenerationResult:
    """Call the jitted sampler and package numpy results (completions cut at EOS, texts at `until`).

    `call(fn, *args, **kwargs)` makes the call (default: directly; `DiffusionLM.call` runs it on a mesh)."""
    ids = check_token_ids(input_ids, model_config.vocab_size)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    mask = None
    if attention_mask is not None:
        mask = np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids shape {ids.shape}")
        if mask.all():  # Dream: an all-ones mask is the same as none ("full" attention)
            mask = None
    if until and tokenizer is None:
        raise ValueError("until=... needs tokenizer=... to decode the completions")
    args = (params, model_config, ids, mask, gen, jax.random.key(seed))
    out = generate(*args, src_mask=src_mask) if call is None else call(generate, *args, src_mask=src_mask)
    sequences = np.asarray(out.sequences)
    if src_mask is not None:  # DiffuLLaMA: the completion starts after each row's source prefix
        src = np.asarray(src_mask, bool)
        start: int | list[int] = [int(np.argmin(row)) if not row.all() else len(row) for row in src]
    else:
        start = ids.shape[1]
    eos = [] if model_config.eos_token_id is None else [model_config.eos_token_id]
    rows = completions(sequences, start, eos)
    texts = decode_texts(tokenizer, rows, until or ()) if tokenizer is not None else None
    history = None if out.history is None else np.asarray(out.history)
    return GenerationResult(sequences, history, np.asarray(out.nfe), rows, texts, np.asarray(out.tokens_per_step),
                            np.asarray(out.forward_equivalents))
