"""Tensor-by-tensor reading and writing of HF weight files (safetensors, sharded, or torch .bin).

Safetensors are parsed directly (an 8-byte header length, a JSON header, raw bytes) and
memory-mapped, so a 7B checkpoint is never held twice and bfloat16 stays bit-exact.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
from collections.abc import Callable
from typing import NamedTuple

import ml_dtypes
import numpy as np


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names the culprit."""


class LazyTensor(NamedTuple):
    """A tensor to write whose data is computed only when its turn comes."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[], np.ndarray]


_ST_TO_NP = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NP_TO_ST = {v: k for k, v in _ST_TO_NP.items()}


def _check_entry(path: pathlib.Path, name: str, info: object, data_bytes: int) -> None:
    """One header entry is well formed and its bytes lie inside the file (catches truncated downloads)."""
    try:
        dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]  # type: ignore[index]
        count = math.prod(int(d) for d in shape)
    except (TypeError, KeyError, ValueError):
        raise ConversionError(f"{path}: corrupt safetensors header (bad entry for tensor {name!r})") from None
    if dtype in _ST_TO_NP and end - start != count * _ST_TO_NP[dtype].itemsize:
        raise ConversionError(
            f"{path}: corrupt safetensors header (tensor {name!r} has {end - start} bytes for shape {shape})"
        )
    if not 0 <= start <= end <= data_bytes:
        raise ConversionError(
            f"{path}: truncated or corrupt safetensors file (tensor {name!r} ends at byte {end} of the data, "
            f"the file holds {max(data_bytes, 0)}); download or copy it again"
        )


class SafetensorsFile:
    """Lazy view of one `.safetensors` file: names, shapes, and one tensor at a time."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ConversionError(f"{path}: not a safetensors file (shorter than its header)")
            (n,) = struct.unpack("<Q", raw)
            if n > os.path.getsize(path):
                raise ConversionError(f"{path}: not a safetensors file (bad header length {n})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConversionError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        size = os.path.getsize(path)
        for name, info in header.items():
            _check_entry(path, name, info, size - 8 - n)
        self._header = header
        self._offset = 8 + n

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        info = self._header[name]
        if info["dtype"] not in _ST_TO_NP:
            raise ConversionError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        return _ST_TO_NP[info["dtype"]]

    def get(self, name: str) -> np.ndarray:
        dtype = self.dtype(name)
        start, end = self._header[name]["data_offsets"]
        mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._offset + start, shape=(end - start,))
        return mm.view(dtype).reshape(self._header[name]["shape"])

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` (of the first axis) read into memory: no mapping stays resident afterwards."""
        dtype, shape = self.dtype(name), self.shape(name)
        row = math.prod(shape[1:]) * dtype.itemsize
        offset = self._offset + self._header[name]["data_offsets"][0] + start * row
        out = np.fromfile(self.path, dtype=dtype, count=(stop - start) * row // dtype.itemsize, offset=offset)
        return out.reshape((stop - start, *shape[1:]))


class TorchBinFile:
    """A `pytorch_model.bin` loaded with `weights_only=True` (never arbitrary pickles)."""

    def __init__(self, path: pathlib.Path):
        import torch

        self.path = path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several types for non-state-dict pickles
            raise ConversionError(
                f"{path}: could not be read as a plain PyTorch state dict with weights_only=True ({e})"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(
                f"{path}: expected a plain state dict {{name: tensor}}, got {type(state).__name__}"
                + ("" if not isinstance(state, dict) else " with non-tensor values")
            )
        self._state = state

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def get(self, name: str) -> np.ndarray:
        import torch

        t = self._state[name]
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def dtype(self, name: str) -> np.dtype:
        return self.get(name).dtype

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.array(self.get(name)[start:stop])


class WeightStore:
    """All weight files of an HF folder behind one name -> tensor interface."""

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self._where: dict[str, SafetensorsFile | TorchBinFile] = {}
        index = folder / "model.safetensors.index.json"
        single = folder / "model.safetensors"
        binfile = folder / "pytorch_model.bin"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise ConversionError(f"{index}: corrupt index (expected JSON with a 'weight_map')") from None
            missing = [f for f in shards if not (folder / f).is_file()]
            if missing:
                raise ConversionError(f"{index}: lists shard(s) {missing} that do not exist in {folder}")
            files = {f: SafetensorsFile(folder / f) for f in shards}
            for name, f in weight_map.items():
                self._where[name] = files[f]
        elif single.is_file():
            f = SafetensorsFile(single)
            self._where = {k: f for k in f.keys()}
        elif binfile.is_file():
            f = TorchBinFile(binfile)
            self._where = {k: f for k in f.keys()}
        else:
            raise ConversionError(
                f"{folder}: no weights found (expected model.safetensors, "
                "model.safetensors.index.json or pytorch_model.bin)"
            )

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def dtype(self, name: str) -> np.dtype:
        return self._where[name].dtype(name)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` of tensor `name`, read into memory (a bounded slice of a big tensor)."""
        return self._where[name].rows(name, start, stop)


def write_safetensors(path: pathlib.Path, tensors: list[tuple[str, np.ndarray]] | list[LazyTensor]) -> None:
    """Write one safetensors file, materialising one tensor at a time.

    Items are `(name, array)` or `LazyTensor`s whose data is produced only when written, so a
    whole model's worth of converted tensors never exists at once.
    """
    items = [
        t if isinstance(t, LazyTensor) else LazyTensor(t[0], t[1].shape, t[1].dtype, lambda a=t[1]: a) for t in tensors
    ]
    header: dict[str, dict] = {}
    offset = 0
    for t in items:
        dtype = np.dtype(t.dtype)
        if dtype not in _NP_TO_ST:
            raise ConversionError(f"tensor {t.name!r}: dtype {dtype} cannot be written to safetensors")
        nbytes = math.prod(t.shape) * dtype.itemsize
        header[t.name] = {"dtype": _NP_TO_ST[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in items:
            arr = np.ascontiguousarray(t.make())
            if arr.shape != tuple(t.shape) or arr.dtype != np.dtype(t.dtype):
                raise ConversionError(
                    f"tensor {t.name!r}: produced {arr.dtype}{arr.shape}, declared {t.dtype}{t.shape}"
                )
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
