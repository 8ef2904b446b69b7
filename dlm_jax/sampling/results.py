"""Host-side results: `GenerationResult` (numpy) and stop handling (trim at EOS, `until` strings)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """What `DiffusionLM.diffusion_generate` returns (all numpy).

    sequences: [B, L + max_new_tokens] the final canvas (prompt included, untrimmed, as Dream returns it).
    history: [steps, B, L + max_new_tokens] canvas after every step, or None.
    nfe: [B] model calls each row needed until it had no masks left (CFG counts two per step).
    completions: per row, the generated ids after the prompt cut before the first EOS.
    texts: decoded completions cut at the first `until` string, when a tokenizer was given.
    tokens_per_step: [B] generated positions per denoising step.
    forward_equivalents: [B] the trunk's FLOPs counted in forwards over the whole canvas (`nfe` for the exact
        sampler; less with a K/V cache, whose steps run only a few rows).
    """

    sequences: np.ndarray
    history: np.ndarray | None
    nfe: np.ndarray
    completions: list[np.ndarray]
    texts: list[str] | None = None
    tokens_per_step: np.ndarray | None = None
    forward_equivalents: np.ndarray | None = None


def trim_at_eos(tokens: np.ndarray, eos_ids: Iterable[int]) -> np.ndarray:
    """`tokens` (1-D) up to, not including, the first id in `eos_ids`.

    Example:
        >>> trim_at_eos(np.array([5, 6, 2, 7]), [2]).tolist()
        [5, 6]
    """
    hits = np.flatnonzero(np.isin(tokens, list(eos_ids)))
    return tokens[: hits[0]] if hits.size else tokens


def cut_at_until(text: str, until: Sequence[str]) -> str:
    """`text` cut before the earliest occurrence of any stop string (lm-eval's `until`).

    Example:
        >>> cut_at_until("a + b\\n\\nQ: next", ["\\n\\n", "Q:"])
        'a + b'
    """
    cut = len(text)
    for stop in until:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def completions(sequences: np.ndarray, start: int | Sequence[int], eos_ids: Iterable[int]) -> list[np.ndarray]:
    """Each row's generated ids (columns from `start`, one int or one per row), cut before the first EOS."""
    eos = [int(e) for e in eos_ids]
    starts = [start] * len(sequences) if isinstance(start, int) else list(start)
    return [trim_at_eos(np.asarray(row[int(s) :]), eos) for row, s in zip(sequences, starts, strict=True)]


def decode_texts(tokenizer: Any, rows: list[np.ndarray], until: Sequence[str] = ()) -> list[str]:
    """Decode completions (special tokens skipped) and cut each at its first `until` string."""
    return [cut_at_until(tokenizer.decode(row.tolist(), skip_special_tokens=True), until) for row in rows]
