"""The one table mapping logical axis names to mesh axes, and its validation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
from jax.sharding import PartitionSpec

from dlm_jax.parallel.mesh import MESH_AXES

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

LOGICAL_AXES = ("batch", "seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers")

# Priority order matters: an array dim takes the first rule whose mesh axes are still free on
# that array (flax semantics). So activations ("batch", "seq", "embed") get batch on
# (data, fsdp) and leave embed unsharded, while params ("embed", "mlp") get embed on fsdp.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


def make_rules(overrides: Mapping[str, MeshAxes] | Iterable[tuple[str, MeshAxes]] = ()) -> Rules:
    """`DEFAULT_RULES` with entries replaced (same priority slot) or appended, then validated.

    Example:
        >>> dict(make_rules({"kv_heads": None}))["kv_heads"] is None
        True
    """
    overrides = dict(overrides)
    table = dict(DEFAULT_RULES)
    table.update({k: _normalise(v) for k, v in overrides.items()})
    rules = tuple(table.items())
    validate_rules(rules)
    return rules


def _normalise(value: Any) -> MeshAxes:
    if value is None or isinstance(value, str):
        return value
    return tuple(value)


def validate_rules(rules: Rules, mesh_axes: Iterable[str] = MESH_AXES) -> None:
    """Raise ValueError for a rule naming an unknown logical or mesh axis, or a duplicate name."""
    mesh_axes = tuple(mesh_axes)
    seen = set()
    for entry in rules:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise ValueError(f"sharding rule {entry!r}: expected a (logical_name, mesh_axes) pair")
        name, axes = entry
        if name not in LOGICAL_AXES:
            raise ValueError(f"sharding rule for {name!r}: unknown logical axis; known: {LOGICAL_AXES}")
        if name in seen:
            raise ValueError(f"sharding rule for {name!r} appears twice")
        seen.add(name)
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            if axis not in mesh_axes:
                raise ValueError(
                    f"sharding rule {name!r} -> {axes!r} names mesh axis {axis!r}, which is not one of {mesh_axes}"
                )


def logical_to_mesh_spec(logical: PartitionSpec | tuple | None, rules: Rules) -> PartitionSpec:
    """Translate one spec of logical names into mesh axes with flax's priority semantics.

    Example:
        >>> tuple(logical_to_mesh_spec(PartitionSpec("embed", "mlp"), DEFAULT_RULES))
        ('fsdp', 'tensor')
    """
    if logical is None:
        return PartitionSpec()
    unknown = [n for n in logical if isinstance(n, str) and n not in dict(rules)]
    if unknown:
        raise ValueError(f"logical axis name(s) {unknown} have no sharding rule; rules cover {[k for k, _ in rules]}")
    return PartitionSpec(*nn.logical_to_mesh_axes(tuple(logical), rules))
