"""One engine that walks a family's conversion table in either direction, one block at a time.

A model is opened as a `Source`: its config plus one `Leaf` per parameter that reads any range of
layers on demand (from an HF folder, a native folder, an SMDM lit-gpt file or an in-memory tree).
Conversions stream leaves straight from the source to the output (a native parameter folder written
layer by layer, or safetensors written tensor by tensor), so no conversion holds the model in memory;
`from_pretrained` assembles each leaf once, in its final dtype. Outputs are written to a temporary
sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections import defaultdict
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from dlm_jax.checkpoint_io.leaves import Leaf, Path, leaves_of, materialize, return_freed_blocks_to_os
from dlm_jax.checkpoint_io.zarr_params import WRITE_BUDGET_BYTES
from dlm_jax.conversion.hf_reader import hf_leaves, hf_shape
from dlm_jax.conversion.lit_gpt import LIT_GPT_EMBEDDING, open_lit_gpt_store
from dlm_jax.conversion.side_files import copy_side_files
from dlm_jax.conversion.tables import (
    IGNORED_HF_SUFFIXES,
    Rule,
    canonical_hf_name,
    config_from_hf,
    config_to_hf,
    rules_for,
)
from dlm_jax.conversion.tensor_io import ConversionError, LazyTensor, WeightStore, write_safetensors
from dlm_jax.models.config import RUNTIME_FIELDS, ModelConfig
from dlm_jax.output_dir import atomic_output_dir

NP_DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}


class Source(NamedTuple):
    """An opened model: its config, its parameters as leaves, and the HF config.json it came with (if any)."""

    config: ModelConfig
    leaves: dict[Path, Leaf]
    hf_config: dict[str, Any] | None


def _check_overrides(overrides: dict[str, Any]) -> None:
    bad = sorted(set(overrides) - RUNTIME_FIELDS)
    if bad:
        raise ConversionError(
            f"override(s) {bad} would change the checkpoint's shapes; only runtime fields "
            f"can be overridden: {sorted(RUNTIME_FIELDS)}"
        )


def read_hf_config(folder: pathlib.Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"model folder {folder} has no config.json (HF format) or dlm_jax_config.json (dlm_jax format)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object of config fields, got {type(data).__name__}")
    return data


def _stored_dtype(store: WeightStore, name: str) -> str:
    """The dtype the checkpoint stores `name` in, as one of NP_DTYPES (float64 reads as float32)."""
    dtype = store.dtype(name)
    return next((k for k, v in NP_DTYPES.items() if v == dtype), "float32")


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in NP_DTYPES:
        raise ConversionError(f"dtype={dtype!r} is not one of {sorted(NP_DTYPES)}")


def open_hf(folder: str | pathlib.Path, dtype: str | None = "float32", **overrides: Any) -> Source:
    """An HF folder as a `Source` whose leaves read layer by layer, in `dtype`; nothing is loaded yet.

    `dtype=None` keeps the dtype the weights are stored in (that of the token embedding). Names,
    shapes and dtypes of all tensors are checked here, before any data is read.
    """
    folder = pathlib.Path(folder)
    _check_dtype(dtype)
    _check_overrides(overrides)
    hf_config = read_hf_config(folder)
    source = str(folder / "config.json")
    config = config_from_hf(hf_config, overrides, source=source)
    store = WeightStore(folder)
    names = {canonical_hf_name(k, config.family): k for k in store.keys()}
    rules = rules_for(config)
    if dtype is None and rules[0].hf in names:
        dtype = _stored_dtype(store, names[rules[0].hf])
    dtype = dtype or "float32"
    config = config.replace(**{"param_dtype": dtype, "compute_dtype": dtype, **overrides})
    expected = {r.hf.format(i=i) for r in rules for i in (range(config.num_layers) if r.layered else [0])}
    tied_head = {"lm_head.weight"} if config.tie_embeddings else set()
    extra = sorted(n for n in names if n not in expected and n not in tied_head and not n.endswith(IGNORED_HF_SUFFIXES))
    missing = sorted(expected - set(names))
    if missing:
        raise ConversionError(f"{folder}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        raise ConversionError(
            f"{folder}: unexpected tensor(s) {extra[:8]}{' ...' if len(extra) > 8 else ''} "
            f"for a {hf_config.get('model_type')} model with {config.num_layers} layers"
        )
    return Source(config, hf_leaves(folder, store, names, config, NP_DTYPES[dtype]), hf_config)


def import_hf(
    folder: str | pathlib.Path, dtype: str | None = "float32", **overrides: Any
) -> tuple[ModelConfig, dict, dict[str, Any]]:
    """Read an HF folder into (ModelConfig, params on device, the source config.json dict).

    `dtype=None` keeps the dtype the weights are stored in (that of the token embedding).

    Example:
        >>> import jax
        >>> from dlm_jax import DiffusionLM, ModelConfig
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
        ...                   mask_token_id=63)
        >>> folder = DiffusionLM.init(cfg).save_pretrained("tiny_hf", format="hf")
        >>> config, params, hf_config = import_hf(folder, dtype="bfloat16")
        >>> config.hidden_size, hf_config["model_type"], {str(x.dtype) for x in jax.tree.leaves(params)}
        (32, 'llama', {'bfloat16'})
    """
    config, leaves, hf_config = open_hf(folder, dtype, **overrides)
    return config, materialize(leaves), hf_config


def open_lit_gpt(
    path: str | pathlib.Path, dtype: str | None = "float32", preset: str | None = None, **overrides: Any
) -> Source:
    """An SMDM lit-gpt checkpoint file (`.pth` / `.safetensors`) as a `Source`; see `dlm_jax.conversion.lit_gpt`.

    `preset` (a shipped preset name or a YAML file) gives the shapes the file does not record; by
    default the `smdm_*` preset whose shapes match. `dtype=None` keeps the stored dtype.
    """
    path = pathlib.Path(path)
    _check_dtype(dtype)
    _check_overrides(overrides)
    config, store, rules = open_lit_gpt_store(path, preset)
    dtype = dtype or _stored_dtype(store, LIT_GPT_EMBEDDING)
    config = config.replace(**{"param_dtype": dtype, "compute_dtype": dtype, **overrides})
    names = {k: k for k in store.keys()}
    leaves = hf_leaves(path, store, names, config, NP_DTYPES[dtype], rules=rules, config_source=preset or "preset")
    return Source(config, leaves, None)


def open_model(
    folder: str | pathlib.Path, dtype: str | None = "float32", preset: str | None = None, **overrides: Any
) -> Source:
    """An HF folder, a native dlm_jax folder or an SMDM lit-gpt file as a `Source` (leaves in `dtype`; None
    keeps the stored one). `preset` names the ModelConfig of a lit-gpt file (see `open_lit_gpt`)."""
    from dlm_jax import checkpoint_io

    folder = pathlib.Path(folder)
    _check_dtype(dtype)
    _check_overrides(overrides)
    if folder.is_file():
        return open_lit_gpt(folder, dtype, preset, **overrides)
    if preset is not None:
        raise ConversionError(
            f"--preset applies to an SMDM lit-gpt checkpoint file (.pth/.safetensors), not to the folder {folder}"
        )
    if not checkpoint_io.is_native(folder):
        return open_hf(folder, dtype, **overrides)
    if dtype is not None:
        overrides = {"param_dtype": dtype, "compute_dtype": dtype, **overrides}
    return Source(*checkpoint_io.open_native(folder, overrides))


def _hf_tensors(leaves: dict[Path, Leaf], config: ModelConfig, layer: int | None) -> list[LazyTensor]:
    """HF tensors of one layer (or the non-layer ones when `layer` is None), produced on demand."""
    groups: dict[str, list[Rule]] = defaultdict(list)
    for r in rules_for(config):
        if r.layered == (layer is not None):
            groups[r.hf].append(r)

    def make(group: list[Rule]) -> np.ndarray:
        pieces = []
        for rule in group:
            leaf = leaves[rule.ours]
            x = leaf.read(layer, layer + 1)[0] if layer is not None else leaf.read(0, leaf.shape[0])
            x = x.reshape(-1) if rule.lead_axes is None else x.reshape(math.prod(x.shape[: rule.lead_axes]), -1)
            pieces.append(x.T if rule.transpose else x)
        x = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)
        return np.ascontiguousarray(x)

    out = []
    for hf_name, group in groups.items():
        group = sorted(group, key=lambda r: r.part[0] if r.part else 0)
        leaf = leaves[group[0].ours]
        shape = hf_shape(group[0], leaf.shape[1:] if layer is not None else leaf.shape)
        out.append(LazyTensor(hf_name.format(i=layer), shape, leaf.dtype, lambda g=group: make(g)))
    return out


# Runtime fields HF's config.json spells the same way; `max_position_embeddings` is GPT-2's `n_positions`
# and LLaDA's `max_sequence_length`.
_POSITIONS_KEY = {"gpt2": "n_positions", "llada": "max_sequence_length"}
_DEFAULT_ATTENTION = ModelConfig.__dataclass_fields__["attention_mode"].default
_HF_RUNTIME_KEYS = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id", "logit_shift")


def hf_config_for(config: ModelConfig, hf_config: dict[str, Any] | None, dtype: str) -> dict[str, Any]:
    """The config.json to write: the source's with only the changed runtime fields updated, or a generated one.

    `attention_mode` (not an HF key) is kept under `"dlm_jax"` when it differs from the default, so a
    causal (AR-trained) model stays causal through HF and back.
    """
    if hf_config is None:
        out = config_to_hf(config, dtype)
    else:
        out = dict(hf_config)
        base = config_from_hf(hf_config, {})
        for key in _HF_RUNTIME_KEYS:
            if getattr(config, key) != getattr(base, key):
                out[key] = getattr(config, key)
        if config.max_position_embeddings != base.max_position_embeddings:
            out[_POSITIONS_KEY.get(config.family, "max_position_embeddings")] = config.max_position_embeddings
    for key in [k for k in ("torch_dtype", "dtype") if k in out] or ["torch_dtype"]:
        out[key] = dtype
    extra = {k: v for k, v in (out.get("dlm_jax") or {}).items() if k != "attention_mode"}
    if config.attention_mode != _DEFAULT_ATTENTION:
        extra["attention_mode"] = config.attention_mode
    out.pop("dlm_jax", None)
    if extra:
        out["dlm_jax"] = extra
    return out


def export_hf(
    params: dict,
    config: ModelConfig,
    out_dir: str | pathlib.Path,
    *,
    hf_config: dict[str, Any] | None = None,
    dtype: str | None = None,
    source_dir: str | pathlib.Path | None = None,
    max_shard_bytes: int = 4 << 30,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write an HF folder (config.json + safetensors) that transformers loads back.

    `hf_config`, when given (the folder it came from), is written back with only what changed
    (runtime overrides, dtype), so a round trip keeps every key, including those we do not model.
    Tokenizer, generation config and remote-code files are copied from `source_dir`.
    The weights are written in `dtype`, by default the model's `param_dtype`, one tensor at a time.
    """
    dtype = dtype or config.param_dtype
    leaves = leaves_of(params, NP_DTYPES[dtype])
    return export_leaves(leaves, config, out_dir, dtype, hf_config=hf_config, source_dir=source_dir,
                         max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def export_leaves(
    leaves: dict[Path, Leaf],
    config: ModelConfig,
    out_dir: str | pathlib.Path,
    dtype: str,
    *,
    hf_config: dict[str, Any] | None = None,
    source_dir: str | pathlib.Path | None = None,
    max_shard_bytes: int = 4 << 30,
    overwrite: bool = False,
) -> pathlib.Path:
    """`export_hf` from leaves that read in `dtype`: each tensor is read, converted and written alone.

    Checkpoints larger than `max_shard_bytes` get one safetensors shard per layer.
    """
    cfg_json = hf_config_for(config, hf_config, dtype)
    total = sum(leaf.nbytes for leaf in leaves.values())
    out_dir = pathlib.Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite, source=source_dir) as tmp:
        if total <= max_shard_bytes:
            tensors = _hf_tensors(leaves, config, None)
            for i in range(config.num_layers):
                tensors.extend(_hf_tensors(leaves, config, i))
            write_safetensors(tmp / "model.safetensors", tensors)
        else:
            n = config.num_layers + 1
            weight_map = {}
            for shard, layer in enumerate([None, *range(config.num_layers)]):
                fname = f"model-{shard + 1:05d}-of-{n:05d}.safetensors"
                tensors = _hf_tensors(leaves, config, layer)
                write_safetensors(tmp / fname, tensors)
                weight_map.update({t.name: fname for t in tensors})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(cfg_json, indent=2))
        copy_side_files(source_dir, tmp, hf_config)
    return out_dir


def convert(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    to: str,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    budget_bytes: int = WRITE_BUDGET_BYTES,
    preset: str | None = None,
    **overrides: Any,
) -> ModelConfig:
    """Convert a model folder (HF, LLaDA or dlm_jax) or an SMDM lit-gpt file into `to` ("hf" or "dlm_jax"), streaming.

    Leaves go from `src` to `dst` a block at a time (at most `budget_bytes` of native writes in
    flight), so peak memory is a few layers, not the model. The output keeps the source's dtype
    unless `dtype` is given, appears only when complete, and a failure leaves nothing behind.
    Freed blocks are returned to the OS at once (`return_freed_blocks_to_os`, for this process).
    """
    from dlm_jax import checkpoint_io

    if to not in ("hf", "dlm_jax"):
        raise ValueError(f"--to {to!r} is not one of ('hf', 'dlm_jax')")
    return_freed_blocks_to_os()
    source = open_model(src, dtype, preset, **overrides)
    side_dir = None if pathlib.Path(src).is_file() else src  # a lit-gpt file carries no tokenizer or side files
    try:
        if to == "hf":
            export_leaves(source.leaves, source.config, dst, source.config.param_dtype,
                          hf_config=source.hf_config, source_dir=side_dir, overwrite=overwrite)
        else:
            with atomic_output_dir(dst, overwrite=overwrite, source=src) as tmp:
                checkpoint_io.write_native(tmp, source.config, source.leaves, source.hf_config, budget_bytes)
                copy_side_files(side_dir, tmp, source.hf_config)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError as e:  # a full disk, a folder we may not write: one line, not a traceback
        raise ConversionError(f"writing {dst} failed: {e}") from None
    return source.config
