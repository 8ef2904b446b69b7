"""An HF folder's weights as dlm_jax parameter leaves, read one layer (or one row block) at a time.

Every tensor's shape and dtype is checked against the config before any data is read, so a bad
checkpoint fails before an output is written. Data is read with plain file reads (no memory
mapping stays resident), converted to the target dtype while it is copied into place.
"""

from __future__ import annotations

import math
import pathlib
from collections import defaultdict
from typing import Any

import jax
import numpy as np

from dlm_jax.checkpoint_io.leaves import Leaf, Path, rows_for
from dlm_jax.conversion.tables import Rule, rules_for
from dlm_jax.conversion.tensor_io import ConversionError, WeightStore
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig

_READ_BYTES = 16 << 20


def hf_shape(rule: Rule, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape that `rule` maps onto a (per-layer) parameter of `our_shape`."""
    if rule.lead_axes is None:
        shape = (math.prod(our_shape),)
    else:
        shape = (math.prod(our_shape[: rule.lead_axes]), math.prod(our_shape[rule.lead_axes :]))
    if rule.transpose:
        shape = shape[::-1]
    if rule.groups is not None:  # our rows are `slots` of each group's `per_group` slots
        _, per_group, _, slots = rule.groups
        shape = (shape[0] // slots * per_group, *shape[1:])
    if rule.part is not None:
        shape = shape[:-1] + (shape[-1] * rule.part[1],)
    return shape


def _assign(out: np.ndarray, x: np.ndarray) -> None:
    """Copy `x` (any shape of the same size) into the contiguous `out`, casting to its dtype."""
    view = out.view()
    view.shape = x.shape  # raises rather than silently copying if `out` were not contiguous
    np.copyto(view, x, casting="unsafe")


def _ours(x: np.ndarray, rule: Rule) -> np.ndarray:
    """An HF tensor (or a block of its rows) in our orientation, before reshaping."""
    if rule.part is not None:
        idx, count = rule.part
        width = x.shape[-1] // count
        x = x[..., idx * width : (idx + 1) * width]
    if rule.groups is not None:
        groups, per_group, first, slots = rule.groups
        x = x.reshape(groups, per_group, -1, x.shape[-1])[:, first : first + slots].reshape(-1, x.shape[-1])
    return x.T if rule.transpose else x


class _HfLeafReader:
    """Fills rows of one of our parameters from the HF tensors its rules name."""

    def __init__(self, store: WeightStore, names: dict[str, str], rules: list[Rule], shape: tuple[int, ...]):
        self.store, self.names, self.rules, self.shape = store, names, rules, shape
        self.layered = rules[0].layered

    def by_rows(self) -> bool:
        """A whole-tensor rule whose HF rows map to our rows (or, transposed, to our columns)."""
        rule = self.rules[0]
        flat = rule.lead_axes is None and len(self.shape) == 1
        matrix = rule.lead_axes == 1 and len(self.shape) == 2
        return not self.layered and len(self.rules) == 1 and rule.part is None and (flat or matrix)

    def fill(self, out: np.ndarray, start: int, stop: int) -> None:
        if self.layered:
            for i in range(start, stop):
                for rule in self.rules:
                    self._fill_layer(out[i - start], rule, i)
        elif self.by_rows():
            self._fill_by_rows(out, start, stop)
        else:
            whole = np.empty(self.shape, out.dtype)
            for rule in self.rules:
                self._fill_layer(whole, rule, None)
            out[...] = whole[start:stop]

    def _read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        real = self.names[name]
        rows = self.store.shape(real)[0]
        return self.store.rows(real, 0 if start is None else start, rows if stop is None else stop)

    def _fill_layer(self, out: np.ndarray, rule: Rule, layer: int | None) -> None:
        _assign(out, _ours(self._read(rule.hf.format(i=layer)), rule))

    def _fill_by_rows(self, out: np.ndarray, start: int, stop: int) -> None:
        rule = self.rules[0]
        name = rule.hf
        hf_rows = self.store.shape(self.names[name])[0]
        step = rows_for(self.store.shape(self.names[name]), self.store.dtype(self.names[name]).itemsize, _READ_BYTES)
        if not rule.transpose:
            for a in range(start, stop, step):
                b = min(stop, a + step)
                np.copyto(out[a - start : b - start], self._read(name, a, b), casting="unsafe")
            return
        for a in range(0, hf_rows, step):  # our rows are HF's columns
            b = min(hf_rows, a + step)
            np.copyto(out[:, a:b], self._read(name, a, b)[:, start:stop].T, casting="unsafe")


def hf_leaves(
    folder: pathlib.Path,
    store: WeightStore,
    names: dict[str, str],
    config: ModelConfig,
    dtype: np.dtype,
    rules: list[Rule] | None = None,
    config_source: str = "config.json",
) -> dict[Path, Leaf]:
    """Leaves of `config`'s parameter tree read from `store` (`names`: canonical -> stored name), in `dtype`.

    `rules` default to the family's HF table. Raises ConversionError naming the first tensor whose
    shape differs from what the config (read from `config_source`) implies.
    """
    shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), config))
    by_leaf: dict[Path, list[Rule]] = defaultdict(list)
    for rule in rules_for(config) if rules is None else rules:
        by_leaf[rule.ours].append(rule)
    leaves = {}
    for path, rules in by_leaf.items():
        shape = tuple(_get(shapes, path).shape)
        per_layer = shape[1:] if rules[0].layered else shape
        for rule in rules:
            for i in range(config.num_layers) if rule.layered else [None]:
                name = rule.hf.format(i=i)
                got, want = tuple(store.shape(names[name])), hf_shape(rule, per_layer)
                if got != want:
                    raise ConversionError(
                        f"{folder}: tensor {name!r} has shape {got}, expected {want} (from {config_source})"
                    )
                store.dtype(names[name])
        reader = _HfLeafReader(store, names, rules, shape)
        block = 1 if reader.layered else rows_for(shape, dtype.itemsize, _READ_BYTES)
        if reader.by_rows() and rules[0].transpose:
            block = shape[0]  # a transposed head is read once, whole
        leaves[path] = Leaf(path, shape, dtype, block, reader.fill)
    return leaves


def _get(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree
