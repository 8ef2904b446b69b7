"""SMDM's lit-gpt checkpoints: one `.pth` / `.safetensors` file with TinyLlama `lit_gpt` names and no config.

SMDM (`lit_gpt/diffmodel.py`'s `TransEncoder`) is a bidirectional LLaMA: `transformer.wte` has
`padded_vocab_size + 1` rows, `lm_head` `padded_vocab_size` (32064 for its 32000-token tokenizer);
the mask id is the unpadded vocabulary size (32000: its `forward_process` writes `total_dim=32000`),
so the extra last embedding row is never fed and is dropped here. Per block: `norm_1`/`norm_2`
(RMSNorm `weight`), `attn.attn` (q, k, v fused per KV group: each group's queries, then its key, then
its value, `head_size` rows each), `attn.proj`, and the SwiGLU MLP as xformers' `mlp.swiglu.w1/w2/w3`
(w3(silu(w1 x) * w2 x)) or lit-gpt's `mlp.fc_1/fc_2/proj`. A file records no head counts, so the
shapes come from a ModelConfig preset: by default the `smdm_*` preset whose shapes match.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np

from dlm_jax.conversion.tables import Rule
from dlm_jax.conversion.tensor_io import ConversionError, SafetensorsFile, TorchBinFile, WeightStore
from dlm_jax.models.config import ModelConfig, available_presets, family_logit_shift

LIT_GPT_EMBEDDING = "transformer.wte.weight"
_HEAD = "lm_head.weight"
_QKV = "transformer.h.{i}.attn.attn.weight"
_MLP_NAMES = {  # lit-gpt spelling -> (gate, up, down)
    "swiglu": ("mlp.swiglu.w1", "mlp.swiglu.w2", "mlp.swiglu.w3"),
    "fc": ("mlp.fc_1", "mlp.fc_2", "mlp.proj"),
}


def lit_gpt_rules(config: ModelConfig, mlp: str = "swiglu") -> list[Rule]:
    """SMDM's lit-gpt names -> our parameters (`mlp`: "swiglu" for xformers' w1/w2/w3, "fc" for fc_1/fc_2/proj)."""
    p = "transformer.h.{i}."
    groups, per_kv = config.num_kv_heads, config.num_heads // config.num_kv_heads
    rules = [
        Rule(LIT_GPT_EMBEDDING, ("embed", "embedding")),
        Rule(p + "norm_1.weight", ("layers", "attn_norm", "scale"), lead_axes=None),
        Rule(p + "norm_2.weight", ("layers", "mlp_norm", "scale"), lead_axes=None),
        Rule(p + "attn.proj.weight", ("layers", "attn", "o", "kernel"), transpose=True, lead_axes=2),
        Rule("transformer.ln_f.weight", ("final_norm", "scale"), lead_axes=None),
        Rule(_HEAD, ("lm_head", "kernel"), transpose=True),
    ]
    for name, first, slots in (("q", 0, per_kv), ("k", per_kv, 1), ("v", per_kv + 1, 1)):
        rules.append(Rule(_QKV, ("layers", "attn", name, "kernel"), transpose=True,
                          groups=(groups, per_kv + 2, first, slots)))
    for lit, ours in zip(_MLP_NAMES[mlp], ("gate", "up", "down"), strict=True):
        rules.append(Rule(p + lit + ".weight", ("layers", "mlp", ours, "kernel"), transpose=True))
    return rules


class _LitGptPickle(TorchBinFile):
    """A `.pth` state dict read with `weights_only=True`; a Fabric checkpoint's `{"model": ...}` is unwrapped."""

    def __init__(self, path: pathlib.Path):
        import torch

        self.path = path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several types for files that are not plain weight pickles
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConversionError(
                f"{path}: a file --src must be an SMDM lit-gpt checkpoint (.safetensors, or a PyTorch state dict "
                f"read with weights_only=True), and this one could not be read ({first})"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # pretrain/train_mdm.py saves {"model", "optimizer", "iter_num", "step_count"}
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(
                f"{path}: expected a state dict {{name: tensor}} (or a Fabric checkpoint holding one as 'model')"
            )
        self._state = state


class _FirstRows:
    """One tensor of a file seen through its first `rows` rows (SMDM's embedding without its unused last row)."""

    def __init__(self, file: SafetensorsFile | TorchBinFile, rows: int):
        self.file, self.n = file, rows

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.n, *self.file.shape(name)[1:])

    def dtype(self, name: str) -> np.dtype:
        return self.file.dtype(name)

    def get(self, name: str) -> np.ndarray:
        return self.file.get(name)[: self.n]

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.file.rows(name, start, min(stop, self.n))


class LitGptStore(WeightStore):
    """The tensors of one lit-gpt file behind `WeightStore`'s interface (the embedding cut to the head's rows)."""

    def __init__(self, path: pathlib.Path):
        self.folder = path
        file = SafetensorsFile(path) if path.suffix == ".safetensors" else _LitGptPickle(path)
        self._where = {k: file for k in file.keys()}
        for name in (LIT_GPT_EMBEDDING, _HEAD, _QKV.format(i=0)):
            if name not in self._where:
                raise ConversionError(
                    f"{path}: not an SMDM lit-gpt checkpoint (no tensor {name!r}); an HF model is a folder "
                    "with config.json"
                )
        vocab, embed_rows = file.shape(_HEAD)[0], file.shape(LIT_GPT_EMBEDDING)[0]
        if embed_rows not in (vocab, vocab + 1):
            raise ConversionError(
                f"{path}: {LIT_GPT_EMBEDDING} has {embed_rows} rows, expected {vocab} or {vocab + 1} "
                f"({_HEAD} has {vocab})"
            )
        self._where[LIT_GPT_EMBEDDING] = _FirstRows(file, vocab)


def _shapes(store: LitGptStore) -> dict[str, int]:
    """What the file's tensor shapes say about the model."""
    layers = {int(m.group(1)) for k in store.keys() if (m := re.fullmatch(r"transformer\.h\.(\d+)\..*", k))}
    mlp = next((kind for kind, names in _MLP_NAMES.items() if f"transformer.h.0.{names[0]}.weight" in store.keys()),
               None)
    if mlp is None:
        raise ConversionError(
            f"{store.folder}: no MLP weights in block 0 (expected mlp.swiglu.w1/w2/w3 or mlp.fc_1/fc_2/proj)"
        )
    return dict(
        num_layers=max(layers) + 1,
        hidden_size=store.shape(LIT_GPT_EMBEDDING)[1],
        intermediate_size=store.shape(f"transformer.h.0.{_MLP_NAMES[mlp][0]}.weight")[0],
        qkv_rows=store.shape(_QKV.format(i=0))[0],
        vocab_size=store.shape(_HEAD)[0],
        mlp=mlp,
    )


def _qkv_rows(c: ModelConfig) -> int:
    return (c.num_heads + 2 * c.num_kv_heads) * c.head_dim


def _mismatch(c: ModelConfig, got: dict[str, int]) -> list[str]:
    want = dict(num_layers=c.num_layers, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                qkv_rows=_qkv_rows(c))
    return [f"{k} {want[k]} (file: {got[k]})" for k in want if want[k] != got[k]]


def _preset_config(preset: str) -> ModelConfig:
    path = pathlib.Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"--preset {preset}: no such YAML file")
        return ModelConfig.from_yaml(path)
    return ModelConfig.from_preset(preset)


def _matching_preset(store: LitGptStore, got: dict[str, int]) -> tuple[str, ModelConfig]:
    names = [n for n in available_presets() if n.startswith("smdm_")]
    found = [(n, c) for n in names if not _mismatch(c := ModelConfig.from_preset(n), got)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(n for n, _ in found)})"
        raise ConversionError(
            f"{store.folder}: {what} shipped smdm_* preset matches its shapes (layers {got['num_layers']}, "
            f"hidden {got['hidden_size']}, MLP {got['intermediate_size']}, qkv rows {got['qkv_rows']}); "
            "name its ModelConfig with --preset NAME|FILE.yaml"
        )
    return found[0]


def open_lit_gpt_store(path: pathlib.Path, preset: str | None) -> tuple[ModelConfig, LitGptStore, list[Rule]]:
    """(config, store, rules) of an SMDM lit-gpt file; nothing but headers is read.

    The config is the preset's (named, or the one `smdm_*` preset whose shapes match) with the
    checkpoint's vocabulary (its head's rows), family "smdm" and no logit shift.
    """
    store = LitGptStore(path)
    got = _shapes(store)
    name, base = (preset, _preset_config(preset)) if preset is not None else _matching_preset(store, got)
    bad = _mismatch(base, got)
    if bad:
        raise ConversionError(f"{path}: does not match preset {name}: expected {'; '.join(bad)}")
    fields: dict[str, Any] = dict(family="smdm", vocab_size=got["vocab_size"], logit_shift=family_logit_shift("smdm"))
    try:
        config = base.replace(**fields)
    except ValueError as e:
        raise ConversionError(f"{path} with preset {name}: {e}") from None
    if config.mask_token_id is None:
        raise ConversionError(
            f"preset {name} sets no mask_token_id (SMDM's mask id is its unpadded vocabulary size, 32000)"
        )
    rules = lit_gpt_rules(config, got["mlp"])
    expected = {r.hf.format(i=i) for r in rules for i in (range(config.num_layers) if r.layered else [0])}
    for what, names in (("missing", expected - set(store.keys())), ("unexpected", set(store.keys()) - expected)):
        if names:
            listed = sorted(names)
            raise ConversionError(f"{path}: {what} tensor(s) {listed[:8]}{' ...' if len(listed) > 8 else ''}")
    return config, store, rules
