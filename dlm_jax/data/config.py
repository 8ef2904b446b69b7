"""`DataConfig`: where training/validation examples come from and how they become token arrays."""

from __future__ import annotations

import dataclasses
from typing import Any

SYNTHETIC = ("reverse_curse", "sudoku", "countdown", "arithmetic")
SOURCES = ("jsonl", "parquet", "arrayrecord", "tfds")
FORMATS = ("text", "dream", "messages", "s1k", "pairs")


def check_choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    """Refuse a config field outside its choices: `section.name=value is not one of allowed`."""
    if value not in allowed:
        raise ValueError(f"{section}.{name}={value!r} is not one of {allowed}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training/validation examples come from and how they become token arrays.

    `kind`: a synthetic task shipped with the package (`reverse_curse`, `sudoku`, `countdown`,
    `arithmetic`) or a file source (`jsonl`, `parquet`, `arrayrecord`, `tfds`), read lazily (never held
    in memory; see `dlm_jax.data.sources`). `tfds` reads `options.split` / `options.val_split` of the
    dataset named by `path` / `val_path` from `options.data_dir`.
    `format`: `text` (pretraining, packed to seq_len) or an SFT layout (`dream`, `messages`, `s1k`, `pairs`).
    """

    kind: str = "reverse_curse"
    path: str | None = None
    val_path: str | None = None
    format: str = "text"
    text_key: str = "text"
    tokenizer: str | None = None
    pack: bool = True
    truncate: bool = False
    shuffle: bool = True
    num_examples: int = 2000
    val_examples: int = 256
    task_seed: int = 1234
    worker_count: int = 0
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("data", "kind", self.kind, SYNTHETIC + SOURCES)
        check_choice("data", "format", self.format, FORMATS)
        if self.num_examples < 1 or self.val_examples < 0:
            raise ValueError(
                f"data.num_examples must be >= 1 and data.val_examples >= 0, got "
                f"{self.num_examples} / {self.val_examples}"
            )
