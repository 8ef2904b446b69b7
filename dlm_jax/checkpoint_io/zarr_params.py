"""The parameter folder of the native format: Orbax's layout, written and read in blocks with TensorStore.

`write_params` produces what `orbax.checkpoint`'s StandardSave writes without OCDBT (one zarr
array per leaf, in a folder named by the dotted key path, plus the `_METADATA` tree file), so
Orbax restores it as usual. Leaves are chunked in blocks of about 16 MB along their first axis
(one layer per chunk for a 7B model) and written block by block, with at most `budget_bytes`
in flight: a leaf never has to exist whole in memory. `open_params` reads this layout and the
OCDBT / zarr3 layouts Orbax itself writes.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
from typing import Any

import ml_dtypes
import numpy as np
import tensorstore as ts

from dlm_jax.checkpoint_io.leaves import Leaf, Path, rows_for

TREE_METADATA = "_METADATA"
CHUNK_BYTES = 16 << 20
WRITE_BUDGET_BYTES = 64 << 20
_TS_DTYPES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
}


def leaf_key(path: Path) -> str:
    return ".".join(path)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:300] + " ..."


class _InFlight:
    """Writes not yet committed, bounded by their total bytes; a block over the budget is written alone."""

    def __init__(self, folder: pathlib.Path, budget_bytes: int):
        self.folder, self.budget = folder, budget_bytes
        self.items: collections.deque = collections.deque()
        self.bytes = 0

    def add(self, write: Any, block: np.ndarray) -> None:
        self.items.append((write, block))
        self.bytes += block.nbytes

    def make_room(self, nbytes: int) -> None:
        while self.items and self.bytes + nbytes > self.budget:
            self._finish_one()

    def drain(self) -> None:
        while self.items:
            self._finish_one()

    def _finish_one(self) -> None:
        write, block = self.items.popleft()
        try:
            write.result()
        except Exception as e:  # tensorstore reports I/O failures (a full disk) with several types
            raise ValueError(f"writing {self.folder} failed ({_one_line(e)})") from None
        self.bytes -= block.nbytes


def _tree_metadata(shapes: dict[Path, tuple[int, ...]]) -> dict[str, Any]:
    """Orbax's `_METADATA` for a tree of dicts of arrays (key_type 2 = a dict key)."""
    tree = {
        str(path): {
            "key_metadata": [{"key": key, "key_type": 2} for key in path],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False, "write_shape": list(shape)},
        }
        for path, shape in shapes.items()
    }
    return {
        "tree_metadata": tree,
        "use_ocdbt": False,
        "use_zarr3": False,
        "store_array_data_equal_to_fill_value": True,
        "custom_metadata": None,
    }


def write_params(folder: pathlib.Path, leaves: dict[Path, Leaf], budget_bytes: int = WRITE_BUDGET_BYTES) -> None:
    """Write `leaves` as an Orbax parameter tree into the new folder `folder`, block by block.

    Memory in use is one read unit of a leaf (a few layers, or the whole of a leaf that can only be
    read whole, such as a transposed vocabulary head) plus at most `budget_bytes` of pending writes.
    """
    folder.mkdir()
    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    pending = _InFlight(folder, budget_bytes)
    for path, leaf in leaves.items():
        if leaf.dtype not in _TS_DTYPES:
            raise ValueError(f"parameter {leaf_key(path)}: dtype {leaf.dtype} cannot be stored")
        chunk = rows_for(leaf.shape, leaf.dtype.itemsize, CHUNK_BYTES)
        chunk = math.ceil(leaf.shape[0] / math.ceil(leaf.shape[0] / chunk))  # even chunks: zarr pads the last one
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(folder.absolute() / leaf_key(path))},
            "dtype": _TS_DTYPES[leaf.dtype],
            "metadata": {"shape": list(leaf.shape), "chunks": [chunk, *leaf.shape[1:]], "compressor": None},
        }
        array = ts.open(spec, create=True, context=context).result()
        unit = math.ceil(leaf.block_rows / chunk) * chunk
        for start in range(0, leaf.shape[0], unit):
            stop = min(leaf.shape[0], start + unit)
            pending.make_room((stop - start) * leaf.nbytes // leaf.shape[0])
            block = leaf.read(start, stop)
            for offset in range(0, stop - start, chunk):
                piece = block[offset : offset + chunk]
                pending.add(array[start + offset : start + offset + len(piece)].write(piece), piece)
    pending.drain()
    shapes = {path: leaf.shape for path, leaf in leaves.items()}
    (folder / TREE_METADATA).write_text(json.dumps(_tree_metadata(shapes)))


def _open_spec(folder: pathlib.Path, key: str, meta: dict[str, Any]) -> dict[str, Any]:
    root = folder.absolute()
    if meta.get("use_ocdbt", True):
        kvstore: dict[str, Any] = {"driver": "ocdbt", "base": f"file://{root}/", "path": key + "/"}
    else:
        kvstore = {"driver": "file", "path": str(root / key) + "/"}
    return {"driver": "zarr3" if meta.get("use_zarr3") else "zarr", "kvstore": kvstore}


def open_params(folder: pathlib.Path, dtype: np.dtype | None = None) -> dict[Path, Leaf]:
    """Leaves over a parameter folder (ours, or any Orbax StandardSave of a dict tree), cast to `dtype`.

    Reads go by whole chunks, straight into the caller's buffer (cast on the way); a cache of one
    chunk serves per-layer reads of chunks that hold several layers (small leaves, or a leaf Orbax
    stored as one chunk). `dtype=None` keeps each stored dtype.
    """
    try:
        meta = json.loads((folder / TREE_METADATA).read_text())
        entries = meta["tree_metadata"].values()
        paths = [tuple(str(k["key"]) for k in entry["key_metadata"]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{folder}: parameters could not be read (bad {TREE_METADATA}: {_one_line(e)})") from None
    specs = {path: _open_spec(folder, leaf_key(path), meta) for path in paths}
    arrays = _open_all(folder, specs, ts.Context({"cache_pool": {"total_bytes_limit": 0}}))
    shared = [a for a in arrays.values() if a.chunk_layout.read_chunk.shape[0] > 1]
    chunk_bytes = max(
        (math.prod(a.chunk_layout.read_chunk.shape) * a.dtype.numpy_dtype.itemsize for a in shared), default=0
    )
    arrays = _open_all(folder, specs, ts.Context({"cache_pool": {"total_bytes_limit": chunk_bytes}}))
    return {path: _array_leaf(folder, path, array, dtype) for path, array in arrays.items()}


def _open_all(folder: pathlib.Path, specs: dict[Path, dict], context: ts.Context) -> dict[Path, ts.TensorStore]:
    opened = {path: ts.open(spec, open=True, read=True, context=context) for path, spec in specs.items()}
    arrays = {}
    for path, future in opened.items():
        try:
            arrays[path] = future.result()
        except Exception as e:  # tensorstore reports missing or corrupt metadata with several types
            raise ValueError(f"{folder}: parameters could not be read ({leaf_key(path)}: {_one_line(e)})") from None
    return arrays


def _array_leaf(folder: pathlib.Path, path: Path, array: ts.TensorStore, dtype: np.dtype | None) -> Leaf:
    target = np.dtype(dtype or array.dtype.numpy_dtype)
    source = array if array.dtype.numpy_dtype == target else ts.cast(array, _TS_DTYPES[target])

    def fill(out: np.ndarray, start: int, stop: int) -> None:
        try:
            ts.array(out, copy=False, write=True).write(source[start:stop]).result()
        except Exception as e:  # truncated chunk files, I/O errors
            raise ValueError(f"{folder}: parameters could not be read ({leaf_key(path)}: {_one_line(e)})") from None

    return Leaf(path, tuple(array.shape), target, array.chunk_layout.read_chunk.shape[0], fill)
