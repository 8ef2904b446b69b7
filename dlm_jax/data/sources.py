"""Random-access record sources: JSONL, Parquet, ArrayRecord (JSON records) and tensorflow-datasets."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from dlm_jax.data.jsonl import iter_jsonl

_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",), "arrayrecord": (".array_record", ".arrayrecord")}


def resolve_files(path: str, kind: str) -> list[pathlib.Path]:
    """A file, a directory (its files with the kind's suffixes, sorted) or a comma-separated list of files."""
    files: list[pathlib.Path] = []
    for part in str(path).split(","):
        p = pathlib.Path(part.strip())
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in _SUFFIXES[kind])
            if not found:
                raise FileNotFoundError(f"data.path={str(p)!r}: directory has no {'/'.join(_SUFFIXES[kind])} files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"data.path={str(p)!r}: no such file or directory")
    return files


class JsonlSource(Sequence):
    """All records of one or more JSONL files, parsed up front; a bad line raises naming file and line.

    Example:
        >>> _ = pathlib.Path("train.jsonl").write_text('{"text": "a b"}\\n\\n{"text": "c"}\\n')
        >>> src = JsonlSource("train.jsonl")
        >>> len(src), src[1]["text"], src.origin[1]
        (2, 'c', 'train.jsonl:3')
    """

    def __init__(self, path: str):
        self.records: list[dict[str, Any]] = []
        self.origin: list[str] = []
        for file in resolve_files(path, "jsonl"):
            for lineno, record in iter_jsonl(file):
                self.records.append(record)
                self.origin.append(f"{file}:{lineno}")
        if not self.records:
            raise ValueError(f"data.path={path!r}: no records found")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


class ParquetSource(Sequence):
    """Rows of one or more Parquet files as dicts (read with pyarrow)."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.records: list[dict[str, Any]] = []
        self.origin: list[str] = []
        for file in resolve_files(path, "parquet"):
            try:
                rows = pq.read_table(file).to_pylist()
            except Exception as e:  # pyarrow raises several unrelated types for broken files
                raise ValueError(f"{file}: not a readable Parquet file ({e})") from None
            self.records.extend(rows)
            self.origin.extend(f"{file}:row {i}" for i in range(len(rows)))
        if not self.records:
            raise ValueError(f"data.path={path!r}: no rows found")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


class ArrayRecordSource(Sequence):
    """ArrayRecord files whose records are UTF-8 JSON objects (random access through grain)."""

    def __init__(self, path: str):
        import grain

        self.files = [str(f) for f in resolve_files(path, "arrayrecord")]
        self.source = grain.sources.ArrayRecordDataSource(self.files)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.source[index]
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{','.join(self.files)}: record {index} is not a JSON object ({e})") from None
        return record

    @property
    def origin(self) -> _Origin:
        return _Origin(f"{','.join(self.files)}:record")


class TfdsSource(Sequence):
    """A tensorflow-datasets random-access source (`data.path` = dataset name, `options.split`, `options.data_dir`)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        self.name = name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.source[index].items()}

    @property
    def origin(self) -> _Origin:
        return _Origin(f"tfds:{self.name}:record")


class _Origin:
    """`origin[i]` -> 'prefix i' without materialising a list."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __getitem__(self, index: int) -> str:
        return f"{self.prefix} {index}"


def open_source(kind: str, path: str | None, options: dict[str, Any] | None = None) -> Sequence:
    """The record source named by `data.kind` / `data.path`."""
    if not path:
        raise ValueError(f"data.kind={kind!r} needs data.path (a file, a directory or a comma-separated list)")
    options = options or {}
    if kind == "jsonl":
        return JsonlSource(path)
    if kind == "parquet":
        return ParquetSource(path)
    if kind == "arrayrecord":
        return ArrayRecordSource(path)
    if kind == "tfds":
        return TfdsSource(path, options.get("split", "train"), options.get("data_dir"))
    raise ValueError(f"data.kind={kind!r} is not a file source (jsonl, parquet, arrayrecord, tfds)")
