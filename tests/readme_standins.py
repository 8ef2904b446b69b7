"""Tiny stand-ins, under the README's names, for the weights and data that cannot exist offline.

Each builder writes into a working folder what a user would have there: an HF model folder with a
tokenizer (`tokenizer.json` in the `tokenizers` format + `tokenizer_config.json`), a JSONL file in
the layout the README's command reads. Models are tiny random ones (tests/data/parity/dream/model,
tests/hf_models.py); tokenizers are word-level ones built in-process with the `tokenizers` library.
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_DREAM = REPO / "tests" / "data" / "parity" / "dream" / "model"
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "the a an of is are was to in on and or what which who how many much capital france paris city river "
    "question answer user assistant system hello hi again please tell me about sky blue green red sun hot cold "
    "input output add subtract number numbers equals total each has had buys sells gives left more less than "
    "apples books cats dogs days weeks friends money dollars price cost story once upon time there lived king "
    "queen builder maker keeper village forest mountain sea ship road house garden tree flower bird fish"
).split()
SYMBOLS = list("0123456789.,:;?!+-*/=()'\"#$%")


def word_tokenizer(folder: pathlib.Path, vocab_size: int, specials: dict[str, int], roles: dict[str, str],
                   chat_template: str | None = None) -> None:
    """Save a word-level HF tokenizer: `specials` (token -> id), then WORDS and SYMBOLS on the free ids.

    `roles` maps transformers' roles (eos_token, pad_token, mask_token, ...) to special tokens.
    Text is lowercased and digits split one per token, so any number encodes.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    free = [i for i in range(vocab_size) if i not in specials.values()]
    symbols = [s for s in WORDS + SYMBOLS if s not in specials]
    if len(symbols) > len(free):
        raise ValueError(f"vocab_size={vocab_size} leaves {len(free)} ids for {len(symbols)} symbols")
    vocab = {**dict(zip(symbols, free, strict=False)), **specials}
    unk = roles.get("unk_token", next(iter(specials)))
    raw = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    raw.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, **roles)
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in roles.values()]})
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(folder)


def dream(folder: pathlib.Path, instruct: bool) -> pathlib.Path:
    """The tiny Dream checkpoint (vocab 300) with a Qwen-like tokenizer; Instruct adds the chat template.

    Its context is Dream-7B's (RoPE has no position table), so Dream's few-shot prompts fit as they do there.
    """
    shutil.copytree(TINY_DREAM, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}, indent=2))
    specials = {"<|im_start|>": 294, "<|im_end|>": 295, "<|endoftext|>": 296, "<|beginoftext|>": 297,
                "<|pad|>": 298, "<|mask|>": 299}
    roles = {"eos_token": "<|endoftext|>", "bos_token": "<|beginoftext|>", "pad_token": "<|pad|>",
             "mask_token": "<|mask|>", "unk_token": "<|pad|>"}
    word_tokenizer(folder, 300, specials, roles, QWEN_CHAT_TEMPLATE if instruct else None)
    return folder


def llama(folder: pathlib.Path, vocab_size: int, mask_token_id: int | None, seed: int = 0) -> pathlib.Path:
    """A tiny random LLaMA (HF folder) with SentencePiece-like specials (<unk> 0, <s> 1, </s> 2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    extra = {} if mask_token_id is None else {"mask_token_id": mask_token_id}
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **extra)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    roles = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"}
    if mask_token_id is not None:
        specials["<|mdm_mask|>"] = mask_token_id
        roles["mask_token"] = "<|mdm_mask|>"
    word_tokenizer(folder, vocab_size, specials, roles)
    return folder


def gpt2(folder: pathlib.Path, seed: int = 0, n_positions: int = 1024) -> pathlib.Path:
    """A tiny random GPT-2 (vocab 256: <|endoftext|> 254, an added <|mask|> 255) with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=n_positions, bos_token_id=254,
                     eos_token_id=254, mask_token_id=255)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    word_tokenizer(folder, 256, {"<|endoftext|>": 254, "<|mask|>": 255},
                   {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>", "mask_token": "<|mask|>"})
    return folder


def llama_tokenizer(folder: pathlib.Path) -> pathlib.Path:
    """A tokenizer folder alone (LLaMA's 32000-token layout: <unk> 0, <s> 1, </s> 2)."""
    word_tokenizer(folder, 32000, {"<unk>": 0, "<s>": 1, "</s>": 2},
                   {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"})
    return folder


LM_EVAL_MC_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def lm_eval_mc_task(folder: pathlib.Path, name: str, docs: list[dict]) -> pathlib.Path:
    """A multiple-choice lm-eval task `name` in `folder` (`{name}.yaml` over `{name}.jsonl` of `docs`:
    question, choices, label)."""
    data = write_jsonl(folder / f"{name}.jsonl", docs)
    (folder / f"{name}.yaml").write_text(LM_EVAL_MC_TASK.format(name=name, data=data.resolve()))
    return folder


def lm_eval_task(folder: pathlib.Path) -> pathlib.Path:
    """An lm-eval task folder (`--include_path`): a multiple-choice task `my_task` over a local JSONL file."""
    return lm_eval_mc_task(folder, "my_task", [
        {"question": "the sky is", "choices": ["blue", "red"], "label": 0},
        {"question": "the sun is", "choices": ["cold", "hot"], "label": 1},
        {"question": "the grass is", "choices": ["green", "red"], "label": 0},
    ])


def sentences(n: int, seed: int, words: int = 12) -> list[str]:
    """`n` random sentences over WORDS (reproducible)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:60]) for _ in range(words)) + " ." for _ in range(n)]


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_corpus(path: pathlib.Path, n: int, seed: int) -> pathlib.Path:
    """JSONL with a `text` field (pretraining data, perplexity data)."""
    return write_jsonl(path, [{"text": " ".join(sentences(4, seed * 1000 + i))} for i in range(n)])


def pretraining_data(path: pathlib.Path) -> pathlib.Path:
    """`data/train.jsonl` and, beside it, `val.jsonl` (the experiment configs' data.path and data.val_path)."""
    text_corpus(path.with_name("val.jsonl"), 32, 2)
    return text_corpus(path, 96, 1)


def gsm8k(path: pathlib.Path, n: int) -> pathlib.Path:
    """GSM8K's layout: question, answer ending in '#### N'."""
    rows = [{"question": f"a king has {i + 3} apples and buys {i} more . how many apples are left ?",
             "answer": f"{i + 3} + {i} = {2 * i + 3} . #### {2 * i + 3}"} for i in range(n)]
    return write_jsonl(path, rows)


def prompts(path: pathlib.Path) -> pathlib.Path:
    """`dlm-jax generate --input-jsonl` input: one {"prompt": ...} per line."""
    return write_jsonl(path, [{"prompt": p} for p in ("the capital of france is", "the sky is", "once upon a time")])
