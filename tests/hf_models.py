"""Tiny random HF models built in-process (no downloads) for conversion and parity tests."""

import pathlib

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM


def _scale_up(model: torch.nn.Module) -> torch.nn.Module:
    # Random init at std 0.02 gives near-flat logits; widen it so comparisons mean something.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif p.ndim == 1 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "qwen2":
        cfg = Qwen2Config(
            vocab_size=96,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=80,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            max_position_embeddings=64,
            mask_token_id=95,
        )
        return _scale_up(Qwen2ForCausalLM(cfg))
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=80,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=96,
            rope_theta=1e4,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            max_position_embeddings=64,
            mask_token_id=79,
        )
        return _scale_up(LlamaForCausalLM(cfg))
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=90,
            n_embd=48,
            n_layer=2,
            n_head=4,
            n_positions=64,
            mask_token_id=89,
            bos_token_id=88,
            eos_token_id=88,
        )
        return _scale_up(GPT2LMHeadModel(cfg))
    raise ValueError(kind)


def save(model: torch.nn.Module, folder: pathlib.Path, **kwargs) -> pathlib.Path:
    model.save_pretrained(folder, **kwargs)
    return folder


def hf_logits(model: torch.nn.Module, ids: np.ndarray, pad_mask: np.ndarray, causal: bool) -> np.ndarray:
    """HF logits under an explicit additive 4-D mask (all-attend or causal) with Dream's positions."""
    ids_t = torch.as_tensor(ids)
    m = torch.as_tensor(pad_mask).bool()
    allowed = m[:, None, :, None] & m[:, None, None, :]
    if causal:
        allowed = allowed & torch.tril(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool))
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    pos = torch.where(m, m.long().cumsum(-1) - 1, torch.ones_like(ids_t))
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=bias, position_ids=pos).logits.numpy()


def save_tokenizer(folder: pathlib.Path) -> None:
    """A tiny byte-level BPE tokenizer (`tokenizers` format, chat template, eos/pad/mask), trained in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|mask|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the cat sat on the mat", "a dog is not a cat"] * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(folder)


def dream_with_word_tokenizer(data_dir: pathlib.Path, folder: pathlib.Path, chat_template: str | None = None):
    """The tiny Dream parity checkpoint copied to `folder` plus a word-level HF tokenizer whose ids match it:
    w0..w295, then <|endoftext|> 296, <|bos|> 297, <|pad|> 298, <|mask|> 299."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(data_dir / "parity" / "dream" / "model", folder)
    vocab = {f"w{i}": i for i in range(296)}
    vocab.update({"<|endoftext|>": 296, "<|bos|>": 297, "<|pad|>": 298, "<|mask|>": 299})
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|bos|>",
                                  pad_token="<|pad|>", mask_token="<|mask|>")
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(folder)
    return folder
