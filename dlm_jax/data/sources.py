"""Random-access record sources: JSONL, Parquet, ArrayRecord (JSON records) and tensorflow-datasets.

Every source reads lazily: opening one reads an index or metadata, never the records, so a corpus
larger than memory can be shuffled, sharded and batched by grain.
"""

from __future__ import annotations

import collections
import json
import pathlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dlm_jax.data.jsonl import iter_jsonl, line_index, parse_line

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


def checked_index(index: int, size: int) -> int:
    """`index` in `range(size)` (negative counts from the end), else IndexError (which ends `iter(source)`).

    Example:
        >>> checked_index(-1, 3)
        2
    """
    if not -size <= index < size:
        raise IndexError(f"record {index} of {size}")
    return index % size


class JsonlSource(Sequence):
    """The records of one or more JSONL files, read lazily: only a line index is held in memory.

    Opening scans each file once for its non-blank lines (a few bytes of index per line); a record
    is parsed when it is read, and a bad line raises naming file and line.

    Example:
        >>> _ = pathlib.Path("train.jsonl").write_text('{"text": "a b"}\\n\\n{"text": "c"}\\n')
        >>> src = JsonlSource("train.jsonl")
        >>> len(src), src[1]["text"], src.origin[1]
        (2, 'c', 'train.jsonl:3')
    """

    def __init__(self, path: str):
        self.files = resolve_files(path, "jsonl")
        self._index = [line_index(f) for f in self.files]
        self._first = np.cumsum([0] + [len(starts) for starts, _, _ in self._index])
        if not self._first[-1]:
            raise ValueError(f"data.path={path!r}: no records found")
        self.origin = _Origin(self._where)

    def __len__(self) -> int:
        return int(self._first[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        """(file, line of that file) of record `index`."""
        index = checked_index(index, len(self))
        k = int(np.searchsorted(self._first, index, side="right")) - 1
        return k, index - int(self._first[k])

    def _where(self, index: int) -> str:
        k, j = self._locate(index)
        return f"{self.files[k]}:{int(self._index[k][2][j])}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, j = self._locate(index)
        starts, lengths, numbers = self._index[k]
        with open(self.files[k], "rb") as f:
            f.seek(int(starts[j]))
            line = f.read(int(lengths[j]))
        return parse_line(line, self.files[k], int(numbers[j]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The records in order, each file read sequentially."""
        for file in self.files:
            for _, record in iter_jsonl(file):
                yield record


class ParquetSource(Sequence):
    """Rows of one or more Parquet files as dicts, read lazily by row group (with pyarrow).

    Only the files' metadata is read up front; a row is read from its row group, and the last
    few row groups read are cached, so memory is bounded by the row-group size. Shuffled reads
    decode a row group per row: write shuffled training corpora with small row groups (or as ArrayRecord).
    """

    CACHED_GROUPS = 4

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.files = resolve_files(path, "parquet")
        self._groups: list[tuple[int, int]] = []  # (file, row group) of each row group, in order
        sizes, self._file_first = [], []
        for k, file in enumerate(self.files):
            self._file_first.append(sum(sizes))
            try:
                meta = pq.ParquetFile(file).metadata
            except Exception as e:  # pyarrow raises several unrelated types for broken files
                raise ValueError(f"{file}: not a readable Parquet file ({e})") from None
            for g in range(meta.num_row_groups):
                self._groups.append((k, g))
                sizes.append(meta.row_group(g).num_rows)
        self._first = np.cumsum([0] + sizes)
        if not self._first[-1]:
            raise ValueError(f"data.path={path!r}: no rows found")
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.origin = _Origin(self._where)

    def __len__(self) -> int:
        return int(self._first[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        """(row group, row of that group) of row `index`."""
        index = checked_index(index, len(self))
        group = int(np.searchsorted(self._first, index, side="right")) - 1
        return group, index - int(self._first[group])

    def _where(self, index: int) -> str:
        k = self._groups[self._locate(index)[0]][0]
        return f"{self.files[k]}:row {index % len(self) - self._file_first[k]}"

    def _row_group(self, group: int) -> Any:
        import pyarrow.parquet as pq

        with self._lock:
            if group in self._cache:
                self._cache.move_to_end(group)
                return self._cache[group]
        k, g = self._groups[group]
        try:
            table = pq.ParquetFile(self.files[k]).read_row_group(g)
        except Exception as e:  # pyarrow raises several unrelated types for broken files
            raise ValueError(f"{self.files[k]}: row group {g} is not readable ({e})") from None
        with self._lock:
            self._cache[group] = table
            while len(self._cache) > self.CACHED_GROUPS:
                self._cache.popitem(last=False)
        return table

    def __getitem__(self, index: int) -> dict[str, Any]:
        group, row = self._locate(index)
        return self._row_group(group).slice(row, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rows in order, a batch at a time."""
        import pyarrow.parquet as pq

        for file in self.files:
            for batch in pq.ParquetFile(file).iter_batches():
                yield from batch.to_pylist()


class ArrayRecordSource(Sequence):
    """ArrayRecord files whose records are UTF-8 JSON objects (random access through grain)."""

    def __init__(self, path: str):
        import grain

        self.files = [str(f) for f in resolve_files(path, "arrayrecord")]
        self.source = grain.sources.ArrayRecordDataSource(self.files)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.source[checked_index(index, len(self))]
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{','.join(self.files)}: record {index} is not a JSON object ({e})") from None
        return record

    @property
    def origin(self) -> _Origin:
        return _Origin(lambda i: f"{','.join(self.files)}:record {i}")


class TfdsSource(Sequence):
    """A tensorflow-datasets split prepared on disk in the ArrayRecord format, read lazily (no TensorFlow needed).

    `data.path` (or `data.val_path`) is the dataset name, looked up in `options.data_dir` (else
    tfds's default); the splits are `options.split` (default `train`) and `options.val_split`
    (default `validation`). Nothing is downloaded. Bytes features are decoded as UTF-8 text.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except tfds.core.registered.DatasetNotFoundError:
            raise FileNotFoundError(f"data.path={name!r}: no prepared tfds dataset of that name in "
                                    f"options.data_dir={data_dir!r} (nothing is downloaded)") from None
        except (ValueError, AssertionError) as e:
            raise ValueError(f"tfds dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
        self.name, self.split = name, split

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source[checked_index(index, len(self))]
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in record.items()}

    @property
    def origin(self) -> _Origin:
        return _Origin(lambda i: f"tfds:{self.name}[{self.split}] record {i}")


class _Origin:
    """`origin[i]`: where record i comes from, computed on demand (no list of strings)."""

    def __init__(self, where: Callable[[int], str]):
        self.where = where

    def __getitem__(self, index: int) -> str:
        return self.where(index)


def open_source(kind: str, path: str | None, options: dict[str, Any] | None = None, split: str = "train") -> Sequence:
    """The record source named by `data.kind` / `data.path`; `split="val"` picks tfds's `options.val_split`."""
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
        tfds_split = options.get("split", "train") if split == "train" else options.get("val_split", "validation")
        return TfdsSource(path, tfds_split, options.get("data_dir"))
    raise ValueError(f"data.kind={kind!r} is not a file source (jsonl, parquet, arrayrecord, tfds)")
