"""The native `dlm_jax` model format: `dlm_jax_config.json` plus an Orbax parameter tree.

The parameter tree is written and read leaf by leaf and layer by layer with TensorStore
(`zarr_params`, in the layout Orbax's StandardSave writes, so Orbax restores it too); `leaves`
holds the block-by-block parameter readers that conversions and `from_pretrained` share.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dlm_jax.checkpoint_io.leaves import Leaf, Path, leaves_of
from dlm_jax.checkpoint_io.zarr_params import WRITE_BUDGET_BYTES, open_params, write_params
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig

CONFIG_NAME = "dlm_jax_config.json"
PARAMS_DIR = "params"


def is_native(folder: pathlib.Path) -> bool:
    return (folder / CONFIG_NAME).is_file()


def orbax_concurrent_gb(params: dict) -> int:
    """Orbax's in-flight budget (whole GB): enough for the largest leaf, which Orbax never splits.

    A constant 1 GB fails on a 7B model's 1.09 GB embedding ("Requested more bytes than we reserved").
    """
    largest = max((x.size * x.dtype.itemsize for x in jax.tree.leaves(params)), default=0)
    return max(1, math.ceil(largest / 1e9))


def write_native(
    folder: pathlib.Path,
    config: ModelConfig,
    leaves: dict[Path, Leaf],
    hf_config: dict | None,
    budget_bytes: int = WRITE_BUDGET_BYTES,
) -> None:
    """Write config and parameters (streamed from `leaves`) into an existing empty folder (callers make it atomic)."""
    meta = {"model_config": config.to_dict(), "hf_config": hf_config}
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    write_params(folder / PARAMS_DIR, leaves, budget_bytes)


def save_native(folder: pathlib.Path, config: ModelConfig, params: dict, hf_config: dict | None) -> None:
    """Write an in-memory model into an existing empty folder (callers make it atomic).

    One process copies one block at a time to the host. Several processes save collectively with
    Orbax (each writes the shards it holds), its in-flight budget sized to the largest leaf.
    """
    if jax.process_count() == 1:
        write_native(folder, config, leaves_of(params), hf_config)
        return
    meta = {"model_config": config.to_dict(), "hf_config": hf_config}
    if jax.process_index() == 0:
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    gb = orbax_concurrent_gb(params)
    handler = ocp.StandardCheckpointHandler(save_concurrent_gb=gb, restore_concurrent_gb=gb)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save((folder / PARAMS_DIR).absolute(), args=ocp.args.StandardSave(params))


def open_native(folder: pathlib.Path, overrides: dict[str, Any]) -> tuple[ModelConfig, dict[Path, Leaf], dict | None]:
    """A native folder's config and parameter leaves (read lazily, in `param_dtype` after `overrides`).

    A bad config file, missing or mismatched parameters is one error naming the path.
    """
    path = folder / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
        config = ModelConfig.from_dict(meta["model_config"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid dlm_jax config ({_one_line(e)})") from None
    config = config.replace(**overrides)
    params_dir = (folder / PARAMS_DIR).absolute()
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{params_dir}: missing (a dlm_jax model folder holds its parameters there)")
    leaves = open_params(params_dir, np.dtype(jax.numpy.dtype(config.param_dtype)))
    want = {
        tuple(k.key for k in key_path): tuple(x.shape)
        for key_path, x in jax.tree_util.tree_flatten_with_path(
            jax.eval_shape(lambda: decoder.init(jax.random.key(0), config))
        )[0]
    }
    got = {p: leaf.shape for p, leaf in leaves.items()}
    if got != want:
        diff = sorted(set(want.items()) ^ set(got.items()))[:4]
        raise ValueError(
            f"{params_dir}: parameters could not be read (they do not match {CONFIG_NAME}; "
            f"differing (path, shape): {diff})"
        )
    return config, leaves, meta.get("hf_config")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:300] + " ..."
    return f"{type(error).__name__}: {text}" if not isinstance(error, ValueError) else text
