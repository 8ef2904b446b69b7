"""Inference on a device mesh: the `mesh=` argument, and calling jitted functions with outputs every process reads.

A model on a mesh keeps its params sharded by the logical rules table (the same one training uses); every
sampler, likelihood kernel or logits call goes through one `MeshRunner`, which jits the call with the rules
active (batch rows split over data x fsdp, heads/MLP/vocab over tensor) and returns fully replicated outputs,
so `np.asarray` works in every process of a multi-process job. Host inputs (numpy prompts, keys) are taken
as global values: every process must pass the same ones (all processes run in lockstep).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from dlm_jax.parallel.api import Partitioner
from dlm_jax.parallel.mesh import MeshConfig
from dlm_jax.parallel.rules import Rules, logical_to_mesh_spec, make_rules

MeshLike = str | MeshConfig | Partitioner


def as_partitioner(mesh: MeshLike, devices: list | None = None) -> Partitioner:
    """A `Partitioner` from `"fsdp=4,tensor=2"` (the `--mesh` form), a `MeshConfig` or a ready `Partitioner`.

    Example:
        >>> dict(as_partitioner("fsdp=4,tensor=2").mesh.shape)  # 8 devices
        {'data': 1, 'fsdp': 4, 'tensor': 2}
        >>> as_partitioner(4)
        Traceback (most recent call last):
        TypeError: mesh=4: expected a string like 'fsdp=4,tensor=2', a MeshConfig or a Partitioner
    """
    if isinstance(mesh, Partitioner):
        return mesh
    if isinstance(mesh, str):
        mesh = MeshConfig.parse(mesh)
    if not isinstance(mesh, MeshConfig):
        raise TypeError(f"mesh={mesh!r}: expected a string like 'fsdp=4,tensor=2', a MeshConfig or a Partitioner")
    return Partitioner.create(mesh, devices)


def _is_data(value: Any) -> bool:
    """Arrays (and pytrees made only of arrays) are traced; everything else is a static argument."""
    leaves = jax.tree.leaves(value)
    return bool(leaves) and all(isinstance(x, np.ndarray | jax.Array) for x in leaves)


class MeshRunner:
    """Calls `fn(params, *args, **kwargs)` jitted on a mesh: arrays traced, the rest static, outputs replicated.

    Arrays keep their shardings (params placed on the mesh); host arrays are replicated. While tracing,
    the mesh and the logical-axis rules are active, so the model's `with_logical_constraint`s split the
    batch over (data, fsdp) exactly as in training, when the batch (the leading dim of the first array after
    the params) divides data x fsdp; otherwise batch rows stay whole and activations split along `embed`
    instead (XLA would pad the rows and copy whole tensors between layouts). Compiled calls are cached per
    function, static values and layout.

    Example:
        >>> runner = MeshRunner(as_partitioner("fsdp=8"))
        >>> out = runner(lambda x, scale: x * scale, np.arange(8.0), scale=2.0)
        >>> out.tolist()[:3], out.sharding.is_fully_replicated
        ([0.0, 2.0, 4.0], True)
    """

    def __init__(self, partitioner: Partitioner):
        self.partitioner = partitioner
        self._whole_rows = make_rules({**dict(partitioner.rules), "batch": None})
        self._compiled: dict[Any, Callable] = {}

    def __call__(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        arg_static = tuple((i, a) for i, a in enumerate(args) if not _is_data(a))
        kw_static = tuple(sorted((k, v) for k, v in kwargs.items() if not _is_data(v)))
        rules = self._rules_for([a for a in args[1:] if _is_data(a)])
        key = (fn, arg_static, kw_static, rules)
        jitted = self._compiled.get(key)
        if jitted is None:
            jitted = self._compiled[key] = self._jit(fn, len(args), dict(arg_static), dict(kw_static), rules)
        dynamic_args = tuple(a for i, a in enumerate(args) if _is_data(a))
        dynamic_kwargs = {k: v for k, v in kwargs.items() if _is_data(v)}
        return jitted(dynamic_args, dynamic_kwargs)

    def _rules_for(self, batch_args: list) -> Rules:
        """The partitioner's rules, or with `batch` unsharded when the batch does not divide its mesh axes."""
        part = self.partitioner
        leaves = jax.tree.leaves(batch_args[:1])
        if not leaves or not np.ndim(leaves[0]):
            return part.rules
        axes = logical_to_mesh_spec(PartitionSpec("batch"), part.rules)[0]
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = int(np.prod([part.mesh.shape[a] for a in names]))
        return part.rules if np.shape(leaves[0])[0] % ways == 0 else self._whole_rows

    def _jit(
        self, fn: Callable, n_args: int, arg_static: dict[int, Any], kw_static: dict[str, Any], rules: Rules
    ) -> Callable:
        part = self.partitioner

        def traced(dynamic_args: tuple, dynamic_kwargs: dict) -> Any:
            it = iter(dynamic_args)
            args = [arg_static[i] if i in arg_static else next(it) for i in range(n_args)]
            if not part.constrain_activations:
                return fn(*args, **kw_static, **dynamic_kwargs)
            with jax.sharding.use_abstract_mesh(part.mesh.abstract_mesh), nn.logical_axis_rules(rules):
                return fn(*args, **kw_static, **dynamic_kwargs)

        return jax.jit(traced, out_shardings=part.replicated)
