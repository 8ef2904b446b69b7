"""Record -> fixed-length example: plain text, or SFT (prompt/response) in Dream, Tulu, s1K or pair layouts."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlm_jax.data.tokenizer import Tokenizer


def sft_texts(record: dict[str, Any], fmt: str, tokenizer: Tokenizer, where: str) -> tuple[str, str]:
    """(prompt text with the chat template applied, response text) for one SFT record."""

    def need(key: str) -> Any:
        if key not in record:
            raise ValueError(f"{where}: data.format={fmt!r} needs key {key!r}; record has {sorted(record)}")
        return record[key]

    if fmt == "dream":
        prompt = need("prompt")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        return tokenizer.chat_prompt(messages), str(need("response"))
    if fmt == "messages":
        messages = need("messages")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}: 'messages' must end with an assistant turn")
        return tokenizer.chat_prompt(messages[:-1]), str(messages[-1]["content"])
    if fmt == "s1k":
        answer = record.get("answer", record.get("solution"))
        if answer is None:
            raise ValueError(f"{where}: data.format='s1k' needs 'answer' (or 'solution'); record has {sorted(record)}")
        return tokenizer.chat_prompt([{"role": "user", "content": str(need("question"))}]), str(answer)
    if fmt == "pairs":
        prompt = record.get("input", record.get("prompt"))
        response = record.get("output", record.get("response"))
        if prompt is None or response is None:
            raise ValueError(f"{where}: data.format='pairs' needs 'input'/'output' (or 'prompt'/'response')")
        return f"{prompt}\n", str(response)
    raise ValueError(f"data.format={fmt!r} is not an SFT format (dream, messages, s1k, pairs)")


def _fit(ids: list[int], seq_len: int, truncate: bool, where: str) -> list[int]:
    if len(ids) > seq_len:
        if not truncate:
            raise ValueError(
                f"{where}: {len(ids)} tokens is longer than train.seq_len={seq_len}; "
                f"raise seq_len or set data.truncate=true to cut such examples"
            )
        return ids[:seq_len]
    return ids


def encode_text(record: dict[str, Any], tokenizer: Tokenizer, key: str, where: str) -> dict[str, np.ndarray]:
    """Pretraining text -> `input_ids` (variable length, EOS appended) for packing."""
    if key not in record:
        raise ValueError(f"{where}: missing text key {key!r} (data.text_key); record has {sorted(record)}")
    return {"input_ids": np.asarray(tokenizer.encode(str(record[key])) + [tokenizer.eos_id], np.int32)}


def encode_padded_text(
    record: dict[str, Any], tokenizer: Tokenizer, key: str, seq_len: int, truncate: bool, where: str
) -> dict[str, np.ndarray]:
    """One text per row, EOS-padded to `seq_len` (LLaDA's convention: pads are EOS, attended and scored)."""
    ids = _fit(list(encode_text(record, tokenizer, key, where)["input_ids"]), seq_len, truncate, where)
    out = np.full(seq_len, tokenizer.eos_id, np.int32)
    out[: len(ids)] = ids
    return {"input_ids": out}


def encode_sft(
    record: dict[str, Any],
    tokenizer: Tokenizer,
    fmt: str,
    seq_len: int,
    *,
    pad_loss: bool = True,
    truncate: bool = False,
    where: str = "record",
) -> dict[str, np.ndarray]:
    """SFT row: `prompt ++ response ++ EOS`, EOS-padded to `seq_len`.

    `prompt_mask` marks the prompt (never noised); `loss_mask` the response + its EOS, plus the
    trailing EOS pads when `pad_loss` (Dream/LLaDA, which teaches the model to stop); without
    `pad_loss` the pads are also dropped from attention (`attention_mask` = 0).

    Example:
        >>> from dlm_jax.data.tokenizer import SimpleTokenizer
        >>> tok = SimpleTokenizer.build(["1+1=\\n2"], level="char")  # ids 0-4 are <pad> <bos> <eos> <mask> <unk>
        >>> ex = encode_sft({"input": "1+1=", "output": "2"}, tok, "pairs", 8)  # prompt "1+1=\\n", EOS = 2
        >>> ex["input_ids"].tolist()
        [7, 6, 7, 9, 5, 8, 2, 2]
        >>> ex["prompt_mask"].tolist(), ex["loss_mask"].tolist()
        ([1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1])
    """
    prompt, response = sft_texts(record, fmt, tokenizer, where)
    p_ids = tokenizer.encode(prompt)
    r_ids = tokenizer.encode(response) + [tokenizer.eos_id]
    if len(p_ids) >= seq_len:
        raise ValueError(f"{where}: prompt has {len(p_ids)} tokens, no room for a response in train.seq_len={seq_len}")
    ids = _fit(p_ids + r_ids, seq_len, truncate, where)
    n, n_p = len(ids), len(p_ids)
    input_ids = np.full(seq_len, tokenizer.eos_id, np.int32)
    input_ids[:n] = ids
    pos = np.arange(seq_len)
    prompt_mask = (pos < n_p).astype(np.int32)
    loss_mask = ((pos >= n_p) & ((pos < n) | pad_loss)).astype(np.int32)
    attention_mask = ((pos < n) | pad_loss).astype(np.int32)
    return {
        "input_ids": input_ids,
        "prompt_mask": prompt_mask,
        "loss_mask": loss_mask,
        "attention_mask": attention_mask,
    }
