"""The files beside the weights that make a model folder usable: tokenizer, generation settings, custom code."""

from __future__ import annotations

import json
import pathlib
import shutil

# Copied (when the source has them) by `convert` in both directions and by `save_pretrained`.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "dlm_jax_training.json",  # what `train` ran with (task settings `eval` reads); see dlm_jax.data.training_record
)


def _has_auto_map(path: pathlib.Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("auto_map"))


def side_files(source_dir: pathlib.Path, hf_config: dict | None = None) -> list[pathlib.Path]:
    """The side files present in `source_dir`.

    The top-level `*.py` files come along when the model or tokenizer config names remote code
    (`auto_map`, e.g. Dream's `modeling_dream.py`), so `trust_remote_code` loading keeps working.
    """
    found = [source_dir / name for name in SIDE_FILES if (source_dir / name).is_file()]
    remote = bool((hf_config or {}).get("auto_map")) or _has_auto_map(source_dir / "tokenizer_config.json")
    if remote:
        found += sorted(p for p in source_dir.glob("*.py") if p.is_file())
    return found


def copy_side_files(source_dir: str | pathlib.Path | None, dst: pathlib.Path, hf_config: dict | None = None) -> None:
    """Copy `source_dir`'s side files into `dst` (contents only: modes follow the umask, not the source)."""
    if source_dir is None:
        return
    for path in side_files(pathlib.Path(source_dir), hf_config):
        shutil.copyfile(path, dst / path.name)
