"""`ModelConfig`: one frozen dataclass that describes every decoder family, plus YAML presets."""

from __future__ import annotations

import dataclasses
import numbers
import pathlib
from typing import Any, Literal

import yaml

from dlm_jax import presets

Family = Literal["dream", "llama", "gpt2", "smdm", "llada"]

# Families trained as mask predictors read the logits at each masked position itself (LLaDA, SMDM); those
# adapted from AR models (Dream, DiffuLLaMA's "llama", DiffuGPT's "gpt2") read them one place to the left.
UNSHIFTED_FAMILIES = frozenset({"smdm", "llada"})
AttentionMode = Literal["bidirectional", "causal"]

# Fields that only change how the same weights are run, never their shapes.
RUNTIME_FIELDS = frozenset(
    {
        "attention_mode",
        "attention_impl",
        "sampling_impl",
        "compute_dtype",
        "param_dtype",
        "softmax_dtype",
        "scan_layers",
        "remat",
        "remat_policy",
        "logit_shift",
        "mask_token_id",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "max_position_embeddings",
    }
)

_CHOICES: dict[str, tuple[str, ...]] = {
    "family": ("dream", "llama", "gpt2", "smdm", "llada"),
    "mlp_kind": ("swiglu", "gelu"),
    "norm_kind": ("rmsnorm", "layernorm"),
    "position_kind": ("rope", "learned"),
    "attention_mode": ("bidirectional", "causal"),
    "attention_impl": ("xla", "pallas", "cudnn", "auto"),
    "sampling_impl": ("xla", "pallas", "auto"),
    "param_dtype": ("float32", "bfloat16", "float16"),
    "compute_dtype": ("float32", "bfloat16", "float16"),
    "softmax_dtype": ("float32", "bfloat16"),
    "remat_policy": ("full", "dots"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and behaviour of a diffusion LM decoder.

    Every family (Dream/Qwen2, DiffuLLaMA, DiffuGPT, SMDM/LLaDA) is this one stack
    with different switches. `remat` recomputes each layer in the backward pass; `remat_policy` says
    what it keeps: "full" nothing (least memory), "dots" the outputs of the weight matmuls (norms,
    attention and activations recomputed: less recompute, more memory).

    Example:
        >>> cfg = ModelConfig.from_preset("smdm_170m")
        >>> cfg.num_layers, cfg.hidden_size
        (18, 768)
    """

    family: str = "llama"
    vocab_size: int = 32001
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 3072
    mlp_kind: str = "swiglu"
    norm_kind: str = "rmsnorm"
    norm_eps: float = 1e-5
    position_kind: str = "rope"
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    logit_shift: bool = False
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    attention_mode: str = "bidirectional"
    attention_impl: str = "xla"
    sampling_impl: str = "xla"
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    softmax_dtype: str = "float32"
    scan_layers: bool = True
    remat: bool = False
    remat_policy: str = "full"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name), f.type))
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"ModelConfig.{key}={value!r} is not one of {allowed}")
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"ModelConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                    f"num_heads={self.num_heads}; set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.position_kind == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        for key in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"ModelConfig.{key}={value} does not fit the vocabulary "
                    f"(vocab_size={self.vocab_size}, valid ids 0..{self.vocab_size - 1})"
                )

    # ---- derived quantities -------------------------------------------------
    def non_embedding_params(self) -> int:
        """Parameters outside the token/position embeddings and the output head."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * hd * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads * hd * d
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        if self.out_bias:
            attn += d
        n_mlp_mats = 3 if self.mlp_kind == "swiglu" else 2
        mlp = n_mlp_mats * d * self.intermediate_size
        if self.mlp_bias:
            mlp += self.intermediate_size + d
        norm = d * (2 if self.norm_kind == "layernorm" else 1)
        return self.num_layers * (attn + mlp + 2 * norm) + norm

    def require_mask_token(self) -> int:
        """The mask id, or a clear error when this checkpoint never declared one."""
        if self.mask_token_id is None:
            raise ValueError(
                "ModelConfig.mask_token_id is not set (the checkpoint's config.json has no "
                "mask_token_id); pass mask_token_id=<id> to from_pretrained or the config"
            )
        return self.mask_token_id

    def replace(self, **overrides: Any) -> ModelConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; known fields: "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | pathlib.Path) -> ModelConfig:
        path = pathlib.Path(path)
        with path.open() as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
                raise ValueError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of ModelConfig fields, got {type(data).__name__}")
        floats = {f.name for f in dataclasses.fields(cls) if f.type.startswith("float")}
        data = {k: _yaml_float(v) if k in floats else v for k, v in data.items()}
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Load the shipped preset `configs/models/<name>.yaml` (packaged with the wheel) and apply overrides."""
        path = preset_path(name)
        return cls.from_yaml(path).replace(**overrides)


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _checked(name: str, value: Any, kind: str) -> Any:
    """`value` as the field's declared type (`int`, `float`, `bool`, `str`, optionally `| None`), or a named error."""
    base, optional = kind.split("|")[0].strip(), "None" in kind
    if value is None and optional:
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if base == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if base == "str" and isinstance(value, str):
        return value
    expected = _EXPECTED[base] + (" or null" if optional else "")
    raise ValueError(f"ModelConfig.{name}={value!r} must be {expected}, got {type(value).__name__}")


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` (no dot) as a string; read such a float field as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _parse_text(flag: str, key: str, raw: str, kind: str) -> Any:
    """A `--set KEY=VALUE` value typed by the field's declared type."""
    text = raw.strip()
    base, optional = kind.split("|")[0].strip(), "None" in kind
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
    except ValueError:
        pass
    if base == "bool" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if base == "str" and text:
        return text
    expected = _EXPECTED[base] + (" or none" if optional else "")
    raise ValueError(f"{flag} {key}={raw}: {key} must be {expected}")


def split_pairs(pairs: list[str], flag: str) -> list[tuple[str, str]]:
    """`["a=1", "b = x"]` -> `[("a", "1"), ("b", " x")]`; a pair without `=` is a one-line error naming `flag`."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        out.append((key.strip(), raw))
    return out


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """Runtime ModelConfig overrides from `KEY=VALUE` strings, each typed by its ModelConfig field.

    Only runtime fields (`RUNTIME_FIELDS`) are accepted: the others would change a checkpoint's shapes.

    Example:
        >>> parse_overrides(["mask_token_id=811", "logit_shift=false", "eos_token_id=none"])
        {'mask_token_id': 811, 'logit_shift': False, 'eos_token_id': None}
    """
    kinds = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    out = {}
    for key, raw in split_pairs(pairs, flag):
        if key not in RUNTIME_FIELDS:
            what = "changes the checkpoint's shapes" if key in kinds else "is not a ModelConfig field"
            raise ValueError(f"{flag} {key}: {key} {what}; runtime fields: {', '.join(sorted(RUNTIME_FIELDS))}")
        out[key] = _parse_text(flag, key, raw, kinds[key])
    return out


def parse_options(pairs: list[str], flag: str) -> dict[str, Any]:
    """Free-form `KEY=VALUE` options (e.g. task options) with YAML-typed values: `["n=8"]` -> `{"n": 8}`."""
    out = {}
    for key, raw in split_pairs(pairs, flag):
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"{flag} {key}={raw}: not a valid value") from None
    return out


def family_logit_shift(family: str) -> bool:
    """Whether checkpoints of `family` shift their logits one place right (the default conversion gives them).

    Example:
        >>> family_logit_shift("dream"), family_logit_shift("llada"), family_logit_shift("smdm")
        (True, False, False)
    """
    return family not in UNSHIFTED_FAMILIES


def available_presets() -> list[str]:
    """Names of the shipped model presets (`configs/models/*.yaml`)."""
    return presets.available("models")


def preset_path(name: str) -> pathlib.Path:
    """The YAML file of a shipped model preset; ValueError naming the available ones if there is none."""
    path = presets.shipped("models", name)
    if path is None:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(available_presets())}")
    return path
