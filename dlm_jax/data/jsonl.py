"""Reading JSONL files line by line, with errors that name the file and line."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any


def iter_jsonl(path: str | pathlib.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, record)` for each non-blank line of a JSONL file of objects.

    Example:
        >>> _ = pathlib.Path("train.jsonl").write_text('{"text": "a b"}\\n\\n{"text": "c"}\\n')
        >>> for lineno, record in iter_jsonl("train.jsonl"):
        ...     print(lineno, record["text"])
        1 a b
        3 c
        >>> _ = pathlib.Path("bad.jsonl").write_text('{"text": "a b"}\\n["c"]\\n')
        >>> list(iter_jsonl("bad.jsonl"))
        Traceback (most recent call last):
        ValueError: bad.jsonl:2: expected a JSON object, got list
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record
