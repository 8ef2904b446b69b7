"""A PyTorch port of Dream's sampler step loop over transformers' Qwen2: the reference for tests and benchmarks.

Dream's `_sample` (temperature 0, alg_temp 0) and its `top_p_logits` / `top_k_logits`, written out
as a user would run them in PyTorch. `tests/test_sampling_algorithms.py` checks dlm_jax's tokens
against it; `benchmarks/sampler.py` times it (and checks the same tokens).
"""

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM


def top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Dream's `top_p_logits`: drop tokens once the sorted cumulative probability exceeds `top_p`."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Dream's `top_k_logits`: drop logits below the k-th largest."""
    top_k = min(top_k, logits.size(-1))
    remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def qwen2_from_folder(model_dir: pathlib.Path, attn_implementation: str = "eager") -> Qwen2ForCausalLM:
    """transformers' Qwen2 with the weights of a Dream-layout HF folder (`config.json`, `model.safetensors`)."""
    c = json.loads((model_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings")
    cfg = Qwen2Config(**{k: c[k] for k in keys}, tie_word_embeddings=False, attn_implementation=attn_implementation)
    net = Qwen2ForCausalLM(cfg).eval()
    net.load_state_dict(load_file(model_dir / "model.safetensors"))
    return net


def dream_generate(
    net: Qwen2ForCausalLM,
    input_ids: np.ndarray,
    mask_id: int,
    max_new_tokens: int,
    steps: int,
    alg: str,
    top_p: float | None = None,
    top_k: int | None = None,
    eps: float = 1e-3,
) -> np.ndarray:
    """Dream's `_sample` at temperature 0 and alg_temp 0 with full (bidirectional) attention: [B, P + new] tokens.

    `alg`: maskgit_plus, topk_margin or entropy; each step reveals `int(mean_masks * (1 - s/t))`
    of the most confident masks (all of them on the last step).
    """
    x = F.pad(torch.as_tensor(input_ids, dtype=torch.long), (0, max_new_tokens), value=mask_id)
    full = torch.ones(x.shape[0], 1, x.shape[1], x.shape[1], dtype=torch.bool)
    timesteps = torch.linspace(1, eps, steps + 1)
    with torch.inference_mode():
        for i in range(steps):
            mask_index = x == mask_id
            logits = net(x, attention_mask=full).logits
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[mask_index]
            if top_p is not None:
                logits = top_p_logits(logits, top_p)
            if top_k is not None:
                logits = top_k_logits(logits, top_k)
            probs = torch.softmax(logits, dim=-1)
            confidence, x0 = probs.max(dim=-1)
            if alg == "topk_margin":
                top2 = torch.topk(probs, 2, dim=-1).values
                confidence = top2[:, 0] - top2[:, 1]
            elif alg == "entropy":
                confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
            t, s = timesteps[i], timesteps[i + 1]
            mean = mask_index.sum() / mask_index.shape[0]
            count = int(mean * (1 - s / t)) if i < steps - 1 else int(mean)
            full_conf = torch.full(x.shape, -torch.inf)
            full_conf[mask_index] = confidence
            if count > 0:
                index = torch.topk(full_conf, count).indices
                cand = torch.full_like(x, mask_id)
                cand[mask_index] = x0
                rows = torch.arange(x.shape[0])[:, None].expand_as(index)
                x[rows, index] = cand[rows, index]
    return x.numpy()
