"""Training order: the records repeated forever, each epoch in its own seeded random order.

grain's `MapDataset.shuffle` finds each shuffled index with a cycle-walking Feistel network over the
record count: milliseconds an index on small data sets (about 3 ms at 24 records, 80 us at 1,000, 10 us
at a million), which starved the train step on the built-in tasks; and placed before `repeat` it gives
every epoch the same order. Here an epoch's order is a permutation table drawn once per epoch (4 bytes
a record) up to `TABLE_LIMIT` records, and grain's index shuffle per epoch beyond it, where it is cheap
and a table would not be.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import grain
import numpy as np
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

TABLE_LIMIT = 1 << 22  # records up to which an epoch's order is a table (16 MB of int32)


class ShuffledEpochs(grain.MapDataset):
    """`parent` repeated without end; epoch e (indices [e*n, (e+1)*n)) visits every record once, in an order
    seeded by (`seed`, e). Random access, so the iterator state stays one index (checkpointable).

    Example:
        >>> ds = ShuffledEpochs(grain.MapDataset.range(4), seed=0)
        >>> first, second = [ds[i] for i in range(4)], [ds[i] for i in range(4, 8)]
        >>> sorted(first), sorted(second), first != second
        ([0, 1, 2, 3], [0, 1, 2, 3], True)
    """

    def __init__(self, parent: grain.MapDataset, *, seed: int):
        super().__init__(parent)
        if len(parent) == 0:
            raise ValueError("cannot shuffle an empty data set")
        self._seed = int(seed)
        self._tables: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"ShuffledEpochs(seed={self._seed})"

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:  # grain reads from several threads; two epochs overlap at an epoch's end
            table = self._tables.get(epoch)
            if table is None:
                table = np.random.default_rng((self._seed, epoch)).permutation(len(self._parent)).astype(np.int32)
                self._tables = {e: t for e, t in self._tables.items() if e == epoch - 1} | {epoch: table}
            return table

    def shuffled_index(self, index: int) -> int:
        """The parent index that position `index` of the endless shuffled stream reads."""
        n = len(self._parent)
        epoch, within = divmod(index, n)
        if n <= TABLE_LIMIT:
            return int(self._order(epoch)[within])
        return index_shuffle_module.index_shuffle(within, max_index=n - 1, seed=(self._seed + epoch) % 2**32, rounds=4)

    def __getitem__(self, index: Any):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.shuffled_index(index)]
