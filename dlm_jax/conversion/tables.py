"""Per-family conversion tables: HF tensor names <-> dlm_jax parameter paths, and config mapping.

A `Rule` says how one HF tensor (or one slice of it) becomes one of our parameters. Layer
rules contain `{i}` and fill the leading (layer) axis of our stacked parameter. LLaDA's own
folders (`model_type: llada`) are one more HF-like family here; SMDM's lit-gpt files (no
config.json) have their table in `lit_gpt.py`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dlm_jax.conversion.tensor_io import ConversionError
from dlm_jax.models.config import ModelConfig, family_logit_shift


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # HF name; `{i}` = layer index
    ours: tuple[str, ...]  # path in our params tree
    transpose: bool = False  # HF Linear stores [out, in]; we store [in, out]
    lead_axes: int | None = 1  # our leading axes forming HF's first axis (None: flatten to 1-D)
    part: tuple[int, int] | None = None  # (index, count): a slice of HF's last axis (GPT-2 c_attn)
    # (groups, slots per group, first slot, slots): rows of a fused tensor laid out group by group, each group
    # `slots per group` blocks of equal rows (lit-gpt's qkv: per KV group its queries, then one k, one v)
    groups: tuple[int, int, int, int] | None = None

    @property
    def layered(self) -> bool:
        return "{i}" in self.hf


def _llama_like(config: ModelConfig) -> list[Rule]:
    p = "model.layers.{i}."
    rules = [
        Rule("model.embed_tokens.weight", ("embed", "embedding")),
        Rule(p + "input_layernorm.weight", ("layers", "attn_norm", "scale"), lead_axes=None),
        Rule(p + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), lead_axes=None),
        Rule(p + "self_attn.o_proj.weight", ("layers", "attn", "o", "kernel"), transpose=True, lead_axes=2),
        Rule("model.norm.weight", ("final_norm", "scale"), lead_axes=None),
    ]
    for name in "qkv":
        rules.append(Rule(p + f"self_attn.{name}_proj.weight", ("layers", "attn", name, "kernel"), transpose=True))
        if config.qkv_bias:
            rules.append(Rule(p + f"self_attn.{name}_proj.bias", ("layers", "attn", name, "bias"), lead_axes=None))
    if config.out_bias:
        rules.append(Rule(p + "self_attn.o_proj.bias", ("layers", "attn", "o", "bias"), lead_axes=None))
    for name in ("gate", "up", "down"):
        rules.append(Rule(p + f"mlp.{name}_proj.weight", ("layers", "mlp", name, "kernel"), transpose=True))
        if config.mlp_bias:
            rules.append(Rule(p + f"mlp.{name}_proj.bias", ("layers", "mlp", name, "bias"), lead_axes=None))
    if not config.tie_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head", "kernel"), transpose=True))
    return rules


def _gpt2(config: ModelConfig) -> list[Rule]:
    p = "transformer.h.{i}."
    rules = [
        Rule("transformer.wte.weight", ("embed", "embedding")),
        Rule("transformer.wpe.weight", ("pos_embed", "embedding")),
        Rule("transformer.ln_f.weight", ("final_norm", "scale"), lead_axes=None),
        Rule("transformer.ln_f.bias", ("final_norm", "bias"), lead_axes=None),
        Rule(p + "attn.c_proj.weight", ("layers", "attn", "o", "kernel"), lead_axes=2),
        Rule(p + "attn.c_proj.bias", ("layers", "attn", "o", "bias"), lead_axes=None),
        Rule(p + "mlp.c_fc.weight", ("layers", "mlp", "fc", "kernel")),
        Rule(p + "mlp.c_fc.bias", ("layers", "mlp", "fc", "bias"), lead_axes=None),
        Rule(p + "mlp.c_proj.weight", ("layers", "mlp", "down", "kernel")),
        Rule(p + "mlp.c_proj.bias", ("layers", "mlp", "down", "bias"), lead_axes=None),
    ]
    for ln, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
        rules.append(Rule(p + f"{ln}.weight", ("layers", ours, "scale"), lead_axes=None))
        rules.append(Rule(p + f"{ln}.bias", ("layers", ours, "bias"), lead_axes=None))
    for idx, name in enumerate("qkv"):
        rules.append(Rule(p + "attn.c_attn.weight", ("layers", "attn", name, "kernel"), part=(idx, 3)))
        rules.append(Rule(p + "attn.c_attn.bias", ("layers", "attn", name, "bias"), lead_axes=None, part=(idx, 3)))
    if not config.tie_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head", "kernel"), transpose=True))
    return rules


def _llada(config: ModelConfig) -> list[Rule]:
    """LLaDA's `LLaDAModelLM` with `block_type: llama` (modeling_llada.py's LLaDALlamaBlock)."""
    t = "model.transformer."
    p = t + "blocks.{i}."
    rules = [
        Rule(t + "wte.weight", ("embed", "embedding")),
        Rule(p + "attn_norm.weight", ("layers", "attn_norm", "scale"), lead_axes=None),
        Rule(p + "ff_norm.weight", ("layers", "mlp_norm", "scale"), lead_axes=None),
        Rule(p + "attn_out.weight", ("layers", "attn", "o", "kernel"), transpose=True, lead_axes=2),
        Rule(t + "ln_f.weight", ("final_norm", "scale"), lead_axes=None),
    ]
    for name in "qkv":
        rules.append(Rule(p + f"{name}_proj.weight", ("layers", "attn", name, "kernel"), transpose=True))
        if config.qkv_bias:
            rules.append(Rule(p + f"{name}_proj.bias", ("layers", "attn", name, "bias"), lead_axes=None))
    # x = ff_out(act(ff_proj(x)) * up_proj(x)): ff_proj is the gate
    for hf, ours in (("ff_proj", "gate"), ("up_proj", "up"), ("ff_out", "down")):
        rules.append(Rule(p + f"{hf}.weight", ("layers", "mlp", ours, "kernel"), transpose=True))
    if not config.tie_embeddings:
        rules.append(Rule(t + "ff_out.weight", ("lm_head", "kernel"), transpose=True))
    return rules


def rules_for(config: ModelConfig) -> list[Rule]:
    return {"gpt2": _gpt2, "llada": _llada}.get(config.family, _llama_like)(config)


# Buffers some HF checkpoints carry that are not parameters (and are safe to skip).
IGNORED_HF_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def canonical_hf_name(name: str, family: str) -> str:
    """GPT-2 files exist with and without the `transformer.` prefix; use one spelling."""
    if family == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
        return "transformer." + name
    return name


_MISSING = object()
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object"}


class _Fields:
    """Typed reads from an HF config.json dict; a wrong type or a missing key is one error naming the field."""

    def __init__(self, hf: dict[str, Any], source: str):
        self.hf, self.source = hf, source

    def get(self, *keys: str, kind: type, default: Any = _MISSING) -> Any:
        for key in keys:
            value = self.hf.get(key)
            if isinstance(value, list) and key.endswith("_token_id"):
                value = value[0] if value else None  # several eos ids: the first is the model's
            if value is not None:
                return self._check(key, value, kind)
        if default is _MISSING:
            raise ConversionError(f"{self.source}: missing field {keys[0]!r} ({_EXPECTED[kind]})")
        return default

    def _check(self, key: str, value: Any, kind: type) -> Any:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise ConversionError(
                f"{self.source}: {key}={json.dumps(value)} must be {_EXPECTED[kind]}, got {_json_type(value)}"
            )
        return value


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _rope_theta(f: _Fields, default: float) -> float:
    params = f.hf.get("rope_parameters") or {}
    scaling = f.hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConversionError(f"{f.source}: rope_parameters / rope_scaling must be JSON objects")
    rope_type = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type", "default")
    if rope_type != "default":
        raise ConversionError(f"{f.source}: rope scaling type {rope_type!r} is not supported (only default RoPE)")
    if f.hf.get("rope_theta") is None and params.get("rope_theta") is not None:
        return _Fields(params, f"{f.source} rope_parameters").get("rope_theta", kind=float)
    return f.get("rope_theta", kind=float, default=default)


def _common_ids(f: _Fields) -> dict[str, Any]:
    names = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
    return {k: f.get(k, kind=int, default=None) for k in names}


# LLaDA config.json switches we read as they must be (modeling_llada.py supports more: we refuse those).
_LLADA_REQUIRED = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
                   "include_bias": False}
_LLADA_DEFAULTS = {"alibi": False, "input_emb_norm": False, "scale_logits": False, "attention_layer_norm": False,
                   "block_group_size": 1, "layer_norm_with_affine": True}


def _llada_fields(f: _Fields) -> dict[str, Any]:
    """ModelConfig fields from a LLaDA config.json (configuration_llada.py's names)."""
    for key, want in _LLADA_REQUIRED.items():
        got = f.get(key, kind=type(want))
        if got != want:
            raise ConversionError(f"{f.source}: {key}={json.dumps(got)} is not supported (expected {json.dumps(want)})")
    for key, want in _LLADA_DEFAULTS.items():
        got = f.get(key, kind=type(want), default=want)
        if got != want:
            raise ConversionError(f"{f.source}: {key}={json.dumps(got)} is not supported (expected {json.dumps(want)})")
    if f.get("bias_for_layer_norm", kind=bool, default=False):
        raise ConversionError(f"{f.source}: bias_for_layer_norm=true is not supported (RMSNorm without bias)")
    d = f.get("d_model", kind=int)
    heads = f.get("n_heads", kind=int)
    mqa = f.get("multi_query_attention", kind=bool, default=False)
    vocab = f.get("vocab_size", kind=int)
    return dict(
        family="llada",
        vocab_size=f.get("embedding_size", kind=int, default=vocab),  # the rows of wte and of the head
        hidden_size=d,
        num_layers=f.get("n_layers", kind=int),
        num_heads=heads,
        num_kv_heads=f.get("n_kv_heads", kind=int, default=1 if mqa else heads),
        intermediate_size=f.get("mlp_hidden_size", kind=int, default=None) or f.get("mlp_ratio", kind=int) * d,
        norm_eps=f.get("rms_norm_eps", kind=float, default=1e-5),
        rope_theta=f.get("rope_theta", kind=float, default=10000.0),
        max_position_embeddings=f.get("max_sequence_length", kind=int, default=1024),
        qkv_bias=f.get("include_qkv_bias", kind=bool, default=False),
        tie_embeddings=f.get("weight_tying", kind=bool),
        logit_shift=f.get("logit_shift", kind=bool, default=family_logit_shift("llada")),
        **_common_ids(f),
    )


def config_from_hf(hf: dict[str, Any], overrides: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate an HF `config.json` dict into a ModelConfig (then apply runtime overrides).

    Field types are checked as transformers (v5) checks them: `"hidden_size": "64"` or
    `"rms_norm_eps": "1e-6"` is refused with an error naming the field, not coerced.
    """
    f = _Fields(hf, source)
    model_type = f.get("model_type", kind=str, default=None)
    if model_type in ("qwen2", "Dream", "dream", "llama"):
        is_qwen = model_type != "llama"
        heads = f.get("num_attention_heads", kind=int)
        hidden = f.get("hidden_size", kind=int)
        attention_bias = f.get("attention_bias", kind=bool, default=False)
        fields = dict(
            family="dream" if is_qwen else "llama",
            vocab_size=f.get("vocab_size", kind=int),
            hidden_size=hidden,
            num_layers=f.get("num_hidden_layers", kind=int),
            num_heads=heads,
            num_kv_heads=f.get("num_key_value_heads", kind=int, default=heads),
            head_dim=f.get("head_dim", kind=int, default=hidden // heads if heads > 0 else None),
            intermediate_size=f.get("intermediate_size", kind=int),
            norm_eps=f.get("rms_norm_eps", kind=float, default=1e-6),
            rope_theta=_rope_theta(f, 1e6 if is_qwen else 1e4),
            max_position_embeddings=f.get("max_position_embeddings", kind=int, default=2048),
            qkv_bias=True if is_qwen else attention_bias,
            out_bias=False if is_qwen else attention_bias,
            mlp_bias=f.get("mlp_bias", kind=bool, default=False),
            tie_embeddings=f.get("tie_word_embeddings", kind=bool, default=False),
            logit_shift=f.get("logit_shift", kind=bool, default=family_logit_shift("dream" if is_qwen else "llama")),
            **_common_ids(f),
        )
        act = f.get("hidden_act", kind=str, default="silu")
        if act != "silu":
            raise ConversionError(
                f"{source}: hidden_act={act!r} is not supported for {model_type} (expected 'silu')"
            )
    elif model_type == "gpt2":
        act = f.get("activation_function", kind=str, default="gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConversionError(f"{source}: activation_function={act!r} is not supported (expected 'gelu_new')")
        d = f.get("n_embd", kind=int)
        fields = dict(
            family="gpt2",
            vocab_size=f.get("vocab_size", kind=int),
            hidden_size=d,
            num_layers=f.get("n_layer", kind=int),
            num_heads=f.get("n_head", kind=int),
            intermediate_size=f.get("n_inner", kind=int, default=4 * d),
            mlp_kind="gelu",
            norm_kind="layernorm",
            norm_eps=f.get("layer_norm_epsilon", kind=float, default=1e-5),
            position_kind="learned",
            max_position_embeddings=f.get("n_positions", kind=int, default=1024),
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_embeddings=f.get("tie_word_embeddings", kind=bool, default=True),
            logit_shift=f.get("logit_shift", kind=bool, default=family_logit_shift("gpt2")),
            **_common_ids(f),
        )
    elif model_type == "llada":
        fields = _llada_fields(f)
    else:
        raise ConversionError(
            f"{source}: unknown model_type {model_type!r}; supported: 'Dream', 'qwen2', 'llama', 'gpt2', 'llada'"
        )
    extra = f.get("dlm_jax", kind=dict, default={})
    fields["attention_mode"] = _Fields(extra, f"{source} dlm_jax").get(
        "attention_mode", kind=str, default="bidirectional"
    )
    try:
        return ModelConfig(**fields).replace(**overrides)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


def config_to_hf(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """An HF `config.json` for a ModelConfig (used when no source config.json is known)."""
    # `logit_shift` is ours: HF ignores it, and it tells an SMDM/LLaDA export from a DiffuLLaMA one.
    ids = {"logit_shift": config.logit_shift}
    ids.update(
        {
            k: getattr(config, k)
            for k in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
            if getattr(config, k) is not None
        }
    )
    if config.family == "gpt2":
        return dict(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            vocab_size=config.vocab_size,
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.intermediate_size,
            n_positions=config.max_position_embeddings,
            layer_norm_epsilon=config.norm_eps,
            activation_function="gelu_new",
            tie_word_embeddings=config.tie_embeddings,
            torch_dtype=dtype,
            **ids,
        )
    if config.norm_kind != "rmsnorm" or config.position_kind != "rope" or config.mlp_kind != "swiglu":
        raise ConversionError(
            f"family {config.family!r} with {config.norm_kind}/{config.position_kind} has no HF layout"
        )
    if config.family == "llada":
        return _llada_config(config, dtype, ids)
    qwen = config.family == "dream"
    if qwen and not (config.qkv_bias and not config.out_bias and not config.mlp_bias):
        raise ConversionError("a Qwen2/Dream export needs qkv_bias=True, out_bias=False, mlp_bias=False")
    out = dict(
        model_type="qwen2" if qwen else "llama",
        architectures=["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.intermediate_size,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu",
        torch_dtype=dtype,
        **ids,
    )
    if not qwen:
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    return out


def _llada_config(config: ModelConfig, dtype: str, ids: dict[str, Any]) -> dict[str, Any]:
    """A LLaDA config.json (the keys configuration_llada.py reads) for a family="llada" model."""
    if config.out_bias or config.mlp_bias or config.head_dim * config.num_heads != config.hidden_size:
        raise ConversionError(
            "a LLaDA export needs out_bias=False, mlp_bias=False and head_dim * num_heads == hidden_size"
        )
    return dict(
        model_type="llada",
        architectures=["LLaDAModelLM"],
        d_model=config.hidden_size,
        n_heads=config.num_heads,
        n_kv_heads=config.num_kv_heads,
        n_layers=config.num_layers,
        mlp_hidden_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        embedding_size=config.vocab_size,
        max_sequence_length=config.max_position_embeddings,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        weight_tying=config.tie_embeddings,
        include_qkv_bias=config.qkv_bias,
        **_LLADA_REQUIRED,
        **_LLADA_DEFAULTS,
        bias_for_layer_norm=False,
        torch_dtype=dtype,
        **ids,
    )
