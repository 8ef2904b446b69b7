"""Shardings for params, optimiser/train state and batches, derived from logical names and rules."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dlm_jax.parallel.rules import Rules, logical_to_mesh_spec

PyTree = Any


def _path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/") or "<root>"


def check_divisible(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh, what: str, logical=None) -> None:
    """Raise ValueError naming the tensor, dimension and mesh axis when a sharded dim does not divide."""
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = int(np.prod([mesh.shape[a] for a in names]))
        if dim >= len(shape):
            raise ValueError(f"{what}: spec {spec} has more entries than the array has dims {shape}")
        if shape[dim] % size:
            logical_name = f" (logical {logical[dim]!r})" if logical is not None and dim < len(logical) else ""
            raise ValueError(
                f"{what}: dimension {dim}{logical_name} of size {shape[dim]} is not divisible by mesh axis "
                f"{'*'.join(names)}={size}; change the mesh or the sharding rule for that logical axis"
            )


def param_specs(logical_tree: PyTree, rules: Rules) -> PyTree:
    """Mesh `PartitionSpec`s for a tree of logical `PartitionSpec`s (e.g. `decoder.logical_axes(cfg)`)."""
    return jax.tree.map(
        lambda s: logical_to_mesh_spec(s, rules),
        logical_tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )


def param_shardings(abstract_params: PyTree, logical_tree: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """`NamedSharding`s for params, after checking every sharded dim divides its mesh axes.

    Example:
        >>> from dlm_jax.models import decoder
        >>> from dlm_jax.models.config import ModelConfig
        >>> from dlm_jax.parallel.mesh import MeshConfig, make_mesh
        >>> from dlm_jax.parallel.rules import DEFAULT_RULES
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> abstract = jax.eval_shape(lambda: decoder.init(jax.random.key(0), cfg))
        >>> mesh = make_mesh(MeshConfig(fsdp=-1))  # fsdp over all 8 devices
        >>> shardings = param_shardings(abstract, decoder.logical_axes(cfg), mesh, DEFAULT_RULES)
        >>> tuple(shardings["embed"]["embedding"].spec)  # [vocab, embed]
        ('tensor', 'fsdp')
        >>> odd = ModelConfig(vocab_size=64, hidden_size=36, num_layers=2, num_heads=2,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> param_shardings(jax.eval_shape(lambda: decoder.init(jax.random.key(0), odd)),
        ...                 decoder.logical_axes(odd), mesh, DEFAULT_RULES)
        Traceback (most recent call last):
        ValueError: param embed/embedding (64, 36): dimension 1 (logical 'embed') of size 36 is not divisible by ...
    """
    specs = param_specs(logical_tree, rules)
    flat_logical = dict(jax.tree_util.tree_flatten_with_path(logical_tree, is_leaf=_is_spec)[0])
    flat_specs = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0])
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    out = []
    for path, leaf in leaves:
        if path not in flat_specs:
            raise ValueError(f"param {_path_str(path)} has no logical axis names")
        spec = flat_specs[path]
        what = f"param {_path_str(path)} {tuple(leaf.shape)}"
        check_divisible(tuple(leaf.shape), spec, mesh, what, flat_logical[path])
        out.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, out)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec) or x is None


def _dict_suffix(path) -> tuple:
    """The trailing run of dict keys of a key path: a param's own path inside any container."""
    suffix = []
    for key in reversed(path):
        if not isinstance(key, jax.tree_util.DictKey):
            break
        suffix.append(key)
    return tuple(reversed(suffix))


def shardings_like_params(tree: PyTree, abstract_params: PyTree, param_shardings_tree: PyTree, mesh: Mesh) -> PyTree:
    """Shard any tree holding copies of the params (train state, optimiser moments) like the params.

    A leaf whose trailing dict-key path (longest match first) and shape equal a parameter's gets its
    sharding (Adam's `mu`/`nu`, the params inside a `TrainState`); every other leaf (step
    counters, PRNG keys, scalars) is replicated.

    Example:
        >>> import optax
        >>> from dlm_jax.parallel.mesh import MeshConfig, make_mesh
        >>> mesh = make_mesh(MeshConfig(fsdp=-1))  # fsdp over all 8 devices
        >>> params = {"w": jax.ShapeDtypeStruct((16, 4), np.float32)}
        >>> p_shardings = {"w": NamedSharding(mesh, PartitionSpec("fsdp"))}
        >>> opt_state = jax.eval_shape(optax.adam(1e-3).init, params)
        >>> sh = shardings_like_params(opt_state, params, p_shardings, mesh)
        >>> tuple(sh[0].mu["w"].spec), tuple(sh[0].count.spec)  # Adam's moments like "w"; its count replicated
        (('fsdp',), ())
    """
    by_path = {}
    for (path, leaf), (_, sharding) in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0],
        jax.tree_util.tree_flatten_with_path(param_shardings_tree)[0],
        strict=True,
    ):
        by_path[tuple(path)] = (tuple(leaf.shape), sharding)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        keys = _dict_suffix(path)
        for start in range(len(keys)):
            match = by_path.get(keys[start:])
            if match is not None and match[0] == tuple(np.shape(leaf)):
                return match[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_logical_spec(ndim: int) -> tuple[str | None, ...]:
    """Logical names of a batch leaf: [batch, seq, ...rest unsharded]."""
    return (("batch", "seq") + (None,) * max(ndim - 2, 0))[:ndim]


def batch_shardings(abstract_batch: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """Shard every batch leaf's leading dim by the `batch` rule (and dim 1 by `seq`), checking divisibility."""

    def one(path, leaf):
        logical = batch_logical_spec(len(leaf.shape))
        spec = logical_to_mesh_spec(PartitionSpec(*logical), rules) if logical else PartitionSpec()
        check_divisible(tuple(leaf.shape), spec, mesh, f"batch[{_path_str(path)}] {tuple(leaf.shape)}", logical)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract_batch)


def abstract_with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
    """`jax.ShapeDtypeStruct`s carrying shardings: AOT compile inputs that allocate nothing."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def per_device_bytes(abstract_tree: PyTree, shardings: PyTree) -> int:
    """Bytes one device holds for `abstract_tree` under `shardings` (the largest shard, exact)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True):
        shard = sharding.shard_shape(tuple(leaf.shape))
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total
