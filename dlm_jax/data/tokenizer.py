"""Tokenisers behind one small interface, and the one loader every command uses (`load_tokenizer`).

A tokenizer is either the built-in word/char `SimpleTokenizer` (the synthetic tasks' vocabulary,
exported as HF-loadable files) or an HF `transformers` tokenizer from a local folder. Nothing
here downloads.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>")
SPECIAL_ROLES = ("pad_token", "bos_token", "eos_token", "mask_token", "unk_token")
# Files that make a folder an HF tokenizer folder (any one of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# The symbols of each level as one regex; the HF export's pre-tokenizer keeps exactly these matches.
_LEVEL_PATTERNS = {"word": r"\w+|[^\w\s]", "char": r"[\s\S]"}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")
# What `SimpleTokenizer.chat_prompt` does, as a chat template: the turns' contents joined by spaces.
SIMPLE_CHAT_TEMPLATE = "{% for m in messages %}{% if not loop.first %} {% endif %}{{ m['content'] }}{% endfor %}"


class Tokenizer(Protocol):
    """What the data pipeline, the trainer, the sampler and the evaluators need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int
    mask_id: int | None

    @property
    def chat_template(self) -> str | None: ...

    def __len__(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...

    def save_pretrained(self, folder: str | pathlib.Path) -> None: ...


class SimpleTokenizer:
    """A word- or character-level tokenizer built in-process from a corpus (no download, no files).

    Ids 0..4 are `<pad> <bos> <eos> <mask> <unk>`; then the corpus symbols in sorted order, so the
    same corpus always gives the same ids. Special-token strings in a text encode to their ids (as
    in HF tokenizers). `save_pretrained` writes files that `transformers.AutoTokenizer` loads
    offline and that encode and decode exactly like this class.

    Example:
        >>> tok = SimpleTokenizer.build(["Ada is the queen of Zor ."], level="word")
        >>> tok.decode(tok.encode("Ada is the queen"))
        'Ada is the queen'
    """

    chat_template = SIMPLE_CHAT_TEMPLATE

    def __init__(self, symbols: Sequence[str], level: str = "word"):
        if level not in _LEVEL_PATTERNS:
            raise ValueError(f"level={level!r} is not one of {tuple(_LEVEL_PATTERNS)}")
        self.level = level
        self.symbols = list(SPECIALS) + [s for s in symbols if s not in SPECIALS]
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.pad_id, self.bos_id, self.eos_id, self.mask_id, self.unk_id = range(len(SPECIALS))
        self.vocab_size = len(self.symbols)

    def __len__(self) -> int:
        return self.vocab_size

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "word") -> SimpleTokenizer:
        """Collect every symbol of `texts` (words+punctuation, or characters)."""
        if level not in _LEVEL_PATTERNS:
            raise ValueError(f"level={level!r} is not one of {tuple(_LEVEL_PATTERNS)}")
        vocab: set[str] = set()
        for text in texts:
            vocab.update(s for s in cls._pieces(text, level) if s not in SPECIALS)
        return cls(sorted(vocab), level)

    @staticmethod
    def _pieces(text: str, level: str) -> list[str]:
        """The symbols of `text`: special-token strings whole, the rest split into words or characters."""
        out: list[str] = []
        for i, part in enumerate(_SPECIAL_RE.split(text)):
            out.extend([part] if i % 2 else re.findall(_LEVEL_PATTERNS[level], part))
        return out

    def encode(self, text: str) -> list[int]:
        return [self.index.get(s, self.unk_id) for s in self._pieces(text, self.level)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Words joined by spaces (char level: concatenated); ids outside the vocabulary are dropped."""
        low = len(SPECIALS) if skip_special_tokens else 0
        parts = [self.symbols[i] for i in map(int, ids) if low <= i < self.vocab_size]
        return (" " if self.level == "word" else "").join(parts)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return " ".join(m["content"] for m in messages)

    def save_pretrained(self, folder: str | pathlib.Path) -> None:
        """HF tokenizer files: `tokenizer.json` (a `tokenizers` WordLevel model), `tokenizer_config.json`
        (special tokens, chat template) and `special_tokens_map.json`."""
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Core

        core = Core(models.WordLevel(vocab=dict(self.index), unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Split(Regex(_LEVEL_PATTERNS[self.level]), behavior="removed", invert=True)
        if self.level == "char":
            core.decoder = decoders.Fuse()  # word level: no decoder, tokens are joined by spaces
        core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        core.save(str(folder / "tokenizer.json"))
        specials = dict(zip(SPECIAL_ROLES, SPECIALS, strict=True))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "clean_up_tokenization_spaces": False,
            "chat_template": self.chat_template,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | pathlib.Path) -> SimpleTokenizer:
        """Read the `{"level", "symbols"}` tokenizer.json that older dlm_jax runs exported."""
        data = json.loads(pathlib.Path(path).read_text())
        return cls(data["symbols"], data["level"])


class HFTokenizer:
    """An HF `transformers` tokenizer loaded from a local folder (never the hub), with its chat template."""

    def __init__(self, path: str | pathlib.Path, mask_token_id: int | None = None):
        from transformers import AutoTokenizer

        folder = pathlib.Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: no such tokenizer folder")
        try:
            self.tok: Any = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers/tokenizers raise many types (OSError, KeyError, Rust parse errors)
            detail = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{folder}: transformers cannot load this tokenizer ({type(e).__name__}: {detail})") from e
        self.vocab_size = len(self.tok)
        self.eos_id = self.tok.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"{folder}: the tokenizer has no eos_token; padding, packing and generation need one")
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id
        self.bos_id = self.tok.bos_token_id
        self.mask_id = mask_token_id if mask_token_id is not None else self.tok.mask_token_id

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tok, "chat_template", None) or None

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.chat_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def save_pretrained(self, folder: str | pathlib.Path) -> None:
        self.tok.save_pretrained(str(folder))


def has_tokenizer(folder: str | pathlib.Path) -> bool:
    """True when `folder` holds tokenizer files (HF's, or an older dlm_jax run's `tokenizer.json`)."""
    folder = pathlib.Path(folder)
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def _is_legacy(path: pathlib.Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON tokenizer file ({e})") from None
    return isinstance(data, dict) and {"symbols", "level"} <= set(data) and "model" not in data


def load_tokenizer(path: str | pathlib.Path, *, mask_token_id: int | None = None) -> Tokenizer:
    """The tokenizer at `path`: an HF tokenizer folder (what `train`, `convert` and `save_pretrained`
    write, or any HF model folder), one of its files, or an older dlm_jax run's `tokenizer.json`.

    `mask_token_id` overrides the HF tokenizer's mask token (models whose tokenizer has none).
    Never downloads. Errors start with the path.

    Example:
        >>> SimpleTokenizer.build(["Ada is the queen of Zor ."]).save_pretrained("model")
        >>> tok = load_tokenizer("model")  # e.g. a trained run's `runs/tiny_mdm/model`
        >>> type(tok).__name__, tok.decode(tok.encode("Ada is the queen"))
        ('HFTokenizer', 'Ada is the queen')
        >>> load_tokenizer("no_such_model")
        Traceback (most recent call last):
        FileNotFoundError: no_such_model: no such tokenizer file or folder
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder")
    legacy = path / "tokenizer.json" if path.is_dir() else path
    if legacy.is_file() and legacy.suffix == ".json" and _is_legacy(legacy):
        return SimpleTokenizer.load(legacy)
    if path.is_file():
        if path.name not in TOKENIZER_FILES:
            raise ValueError(f"{path}: not a tokenizer file; expected a tokenizer folder or one of {TOKENIZER_FILES}")
        path = path.parent
    if not has_tokenizer(path):
        raise FileNotFoundError(f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
    return HFTokenizer(path, mask_token_id)
