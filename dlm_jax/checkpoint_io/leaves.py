"""Parameter leaves that are read block by block, and how they become device arrays.

A `Leaf` is one parameter of the model (e.g. the stacked `layers/mlp/up/kernel`) that can fill any
range of its first axis on demand, already in the target dtype. Readers of HF folders, native
folders and in-memory models all produce leaves; writers and `materialize` consume them one block
at a time, so no conversion ever holds a second copy of the model.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter (at least 1-D): its path, shape and (target) dtype, and a reader of row blocks.

    `fill(out, start, stop)` writes rows `start:stop` of the first axis (layers, for stacked
    parameters) into `out`; `block_rows` is the number of rows worth reading at once.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    block_rows: int
    fill: Callable[[np.ndarray, int, int], None]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def blocks(self) -> Iterator[tuple[int, int]]:
        """(start, stop) row ranges covering the leaf, `block_rows` at a time."""
        step = max(1, self.block_rows)
        for start in range(0, self.shape[0], step):
            yield start, min(self.shape[0], start + step)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` as a new array."""
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        self.fill(out, start, stop)
        return out


def rows_for(shape: tuple[int, ...], itemsize: int, target_bytes: int = 16 << 20) -> int:
    """How many rows of the first axis make about `target_bytes` (at least one)."""
    row = math.prod(shape[1:]) * itemsize
    return max(1, min(shape[0], target_bytes // max(row, 1)))


def return_freed_blocks_to_os() -> None:
    """Make glibc serve allocations of 1 MB or more with mmap, so a freed block leaves the process at once.

    By default glibc raises that threshold as blocks are freed and keeps later blocks of a few MB in
    its heap, where fragmentation holds on to them: a streaming conversion would grow by ~100 MB.
    Changes this process's allocator settings; a no-op without glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary.

    On CPU, `jax.device_put` of such an array uses its memory in place instead of copying it.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _host_leaf(leaf: Leaf) -> np.ndarray:
    out = aligned_empty(leaf.shape, leaf.dtype)
    for start, stop in leaf.blocks():
        leaf.fill(out[start:stop], start, stop)
    return out


def _sharded_leaf(leaf: Leaf, sharding: jax.sharding.Sharding) -> jax.Array:
    """Each block of rows is read once and cut into the shards of this process's devices that need it.

    Devices with the same index (replicas) share one host buffer; the peak is this process's shards
    plus one block, whatever the number of devices.
    """
    shards: dict[tuple, tuple[int, int, tuple[slice, ...], np.ndarray, list]] = {}
    for device, index in sharding.addressable_devices_indices_map(leaf.shape).items():
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in shards:
            start, stop, _ = index[0].indices(leaf.shape[0])
            shape = [len(range(*s.indices(dim))) for s, dim in zip(index, leaf.shape, strict=True)]
            shards[key] = (start, stop, index[1:], aligned_empty(tuple(shape), leaf.dtype), [])
        shards[key][4].append(device)
    for block_start, block_stop in leaf.blocks():
        wanted = [s for s in shards.values() if s[0] < block_stop and block_start < s[1]]
        if not wanted:
            continue
        block = leaf.read(block_start, block_stop)
        for start, stop, rest, out, _ in wanted:
            lo, hi = max(start, block_start), min(stop, block_stop)
            out[lo - start : hi - start] = block[(slice(lo - block_start, hi - block_start), *rest)]
    arrays = [jax.device_put(out, device) for _, _, _, out, devices in shards.values() for device in devices]
    return jax.make_array_from_single_device_arrays(leaf.shape, sharding, arrays)


def materialize(leaves: dict[Path, Leaf], shardings: dict[Path, Any] | None = None) -> dict:
    """The parameter tree as device arrays, read leaf by leaf and block by block.

    Without `shardings`, each leaf is assembled once in host memory and handed to the (CPU or
    accelerator) device; on CPU that array is used in place, so the peak is the parameters plus
    one block. With `shardings` (path -> `jax.sharding.Sharding`), each process reads only the
    rows its own shards need.
    """
    params: dict = {}
    for path, leaf in leaves.items():
        if shardings is not None:
            value = _sharded_leaf(leaf, shardings[path])
        else:
            value = jax.device_put(_host_leaf(leaf))
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return params


def leaves_of(params: dict, dtype: np.dtype | None = None) -> dict[Path, Leaf]:
    """Leaves over an in-memory tree (device or host arrays), read one block at a time (cast to `dtype`)."""
    out: dict[Path, Leaf] = {}

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, key))
            return
        target = np.dtype(dtype or node.dtype)

        def fill(dst: np.ndarray, start: int, stop: int, x: Any = node) -> None:
            dst[...] = np.asarray(x[start:stop])

        out[path] = Leaf(path, tuple(node.shape), target, rows_for(tuple(node.shape), target.itemsize), fill)

    walk(params, ())
    return out
