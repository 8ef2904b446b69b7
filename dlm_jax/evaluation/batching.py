"""Pack (prompt, target) token lists into padded, static-shape arrays for the likelihood estimators."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TargetBatch(NamedTuple):
    """Right-padded requests: a prompt followed by a target span per row.

    tokens [N, L] int32, attention_mask [N, L] int32 (1 = real token), is_target [N, L] bool,
    target_pos [N, T] int32 (positions of the target tokens, in order; padded slots hold L),
    target_valid [N, T] bool. L and T are padded up to multiples so jit compiles few shapes.
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    is_target: np.ndarray
    target_pos: np.ndarray
    target_valid: np.ndarray

    @property
    def target_lengths(self) -> np.ndarray:
        return self.target_valid.sum(-1)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def pack_targets(
    prompts: list[list[int]],
    targets: list[list[int]],
    *,
    max_length: int,
    pad_id: int = 0,
    shifted: bool = False,
    length_multiple: int = 16,
    target_multiple: int = 8,
) -> TargetBatch:
    """Right-pad `prompt + target` rows; every row is checked against `max_length`.

    `shifted` (Dream/DiffuLLaMA/DiffuGPT heads predict token i at position i-1) requires a
    non-empty prompt, since position 0 has no prediction.

    Example:
        >>> b = pack_targets([[5, 6], [5]], [[7], [8, 9]], max_length=32)
        >>> b.tokens.shape, b.tokens[:, :4].tolist()
        ((2, 16), [[5, 6, 7, 0], [5, 8, 9, 0]])
        >>> b.target_pos[:, :2].tolist(), b.target_lengths.tolist()  # padded slots point at L = 16
        ([[2, 16], [1, 2]], [1, 2])
    """
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        raise ValueError("no requests to pack (empty list)")
    lengths = []
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        if len(t) == 0:
            raise ValueError(f"request {i}: the target is empty; every request needs >= 1 target token")
        if shifted and len(p) == 0:
            raise ValueError(
                f"request {i}: the prompt is empty, but this model's logits are shifted (logit_shift=True) "
                "and cannot score the first position; prepend a BOS/prefix token"
            )
        if len(p) + len(t) > max_length:
            raise ValueError(
                f"request {i}: prompt ({len(p)} tokens) + target ({len(t)} tokens) = {len(p) + len(t)} tokens "
                f"is longer than the context (max_length={max_length}); shorten it or raise max_length"
            )
        lengths.append(len(p) + len(t))
    n = len(prompts)
    seq_len = min(_round_up(max(lengths), length_multiple), max(max_length, max(lengths)))
    tgt_len = _round_up(max(len(t) for t in targets), target_multiple)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    attn = np.zeros((n, seq_len), np.int32)
    is_target = np.zeros((n, seq_len), bool)
    target_pos = np.full((n, tgt_len), seq_len, np.int32)
    target_valid = np.zeros((n, tgt_len), bool)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        row = list(p) + list(t)
        tokens[i, : len(row)] = row
        attn[i, : len(row)] = 1
        is_target[i, len(p) : len(row)] = True
        target_pos[i, : len(t)] = np.arange(len(p), len(row))
        target_valid[i, : len(t)] = True
    return TargetBatch(tokens, attn, is_target, target_pos, target_valid)
