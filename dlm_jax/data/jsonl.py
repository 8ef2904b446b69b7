"""Reading JSONL files line by line, with errors that name the file and line."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def parse_line(line: str | bytes, path: str | pathlib.Path, lineno: int) -> dict[str, Any]:
    """One JSONL line as a dict; a malformed line or a non-object raises naming `path:lineno`.

    Example:
        >>> parse_line(b'{"text": "a"}', "f.jsonl", 1)
        {'text': 'a'}
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


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
            if line.strip():
                yield lineno, parse_line(line, path, lineno)


_CHUNK = 1 << 20  # bytes scanned at a time by `line_index` (its working memory is a few times this)
_BLANK = np.zeros(256, bool)
_BLANK[list(b" \t\n\r\x0b\x0c")] = True


def line_index(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(starts, lengths, line_numbers)` of the non-blank lines of a file, found without holding the file.

    The file is scanned in fixed-size chunks, so memory is the index itself (a few bytes a line)
    plus one chunk; `lengths` exclude the newline.

    Example:
        >>> _ = pathlib.Path("idx.jsonl").write_bytes(b'{"a": 1}\\n \\n{"b": 22}')
        >>> [a.tolist() for a in line_index("idx.jsonl")]
        [[0, 11], [8, 9], [1, 3]]
    """
    ends, solid = [], []  # each line's newline offset, and whether the line has a non-blank byte
    carry, size = False, 0  # the line in progress has a non-blank byte; bytes scanned
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            b = np.frombuffer(chunk, np.uint8)
            at = np.flatnonzero(b == 10)
            # any non-blank byte in each piece between newlines (a False sentinel keeps the last piece non-empty)
            has = np.logical_or.reduceat(np.append(~_BLANK[b], False), np.concatenate([[0], at + 1]))
            has[0] |= carry
            ends.append(at + size)
            solid.append(has[:-1])
            carry, size = bool(has[-1]), size + len(b)
    if carry:  # a last line without a newline
        ends.append(np.array([size]))
        solid.append(np.array([True]))
    ends, solid = np.concatenate([*ends, np.zeros(0, np.int64)]), np.concatenate([*solid, np.zeros(0, bool)])
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    keep = np.flatnonzero(solid)
    lengths, numbers = ends[keep] - starts[keep], keep + 1
    small = np.min_scalar_type(max(int(lengths.max(initial=0)), int(numbers.max(initial=0))))
    return starts[keep], lengths.astype(small), numbers.astype(small)
