"""Experiment configuration: frozen dataclasses for train/data/checkpoint, YAML loading and dotted overrides."""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import Any

import yaml

from dlm_jax import presets
from dlm_jax.data.config import DataConfig, check_choice
from dlm_jax.models.config import ModelConfig, split_pairs

OBJECTIVES = ("mdm", "sft", "diffullama", "dream", "ar")
TIME_SAMPLINGS = ("uniform", "antithetic", "stratified")
TIME_WEIGHTINGS = ("cart", "original", "linear")
LOSS_NORMS = ("auto", "tokens", "masked", "response")


def _check_range(section: str, name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{section}.{name}={value} is outside the allowed range [{lo}, {hi}]")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Objective, optimiser and loop settings.

    Objectives (all share one masking function, see `dlm_jax.diffusion.objectives`):
      mdm        SMDM/LLaDA pretraining: masked CE / p_mask, summed, / (B*L)
      sft        LLaDA/SMDM SFT: prompt kept clean, masked CE / p_mask, / response length, mean over batch
      diffullama DiffuLLaMA adaptation: 1/t weights, / masked count, causal->bidirectional annealing
      dream      Dream: CART (or 1/t, or 1-t) weights, / masked count
      ar         autoregressive baseline: causal next-token CE
    Logits are shifted one place whenever the model config says `logit_shift`.

    Example:
        >>> TrainConfig(objective="mdm", lr=2e-4, max_steps=1000).warmup_steps
        100
    """

    objective: str = "mdm"
    eps: float = 1e-3
    time_sampling: str = "uniform"
    time_weighting: str = "cart"
    cart_p: float = 0.3
    loss_norm: str = "auto"
    anneal_steps: int = 0
    sft_pad_loss: bool = True
    cfg_prompt_dropout: float = 0.0
    ssl_ratio: float = 0.0
    lr: float = 2e-4
    min_lr: float = 2e-5
    warmup_steps: int = 100
    max_steps: int = 1000
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    adam_eps: float = 1e-8
    clip: float = 1.0
    grad_accum: int = 1
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    flops: float | None = None
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    eval_mc_samples: int = 4

    def __post_init__(self) -> None:
        s = "train"
        check_choice(s, "objective", self.objective, OBJECTIVES)
        check_choice(s, "time_sampling", self.time_sampling, TIME_SAMPLINGS)
        check_choice(s, "time_weighting", self.time_weighting, TIME_WEIGHTINGS)
        check_choice(s, "loss_norm", self.loss_norm, LOSS_NORMS)
        _check_range(s, "eps", self.eps, 0.0, 0.5)
        _check_range(s, "cart_p", self.cart_p, 1e-6, 1.0)
        for name in ("cfg_prompt_dropout", "ssl_ratio", "b1", "b2"):
            _check_range(s, name, getattr(self, name), 0.0, 1.0)
        positive = ("max_steps", "grad_accum", "batch_size", "seq_len", "log_every", "eval_batches", "eval_mc_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "anneal_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}"
            )
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"train.lr={self.lr} / train.min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        if self.flops is not None and self.flops <= 0:
            raise ValueError(f"train.flops must be > 0, got {self.flops}")

    @property
    def is_diffusion(self) -> bool:
        return self.objective != "ar"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpointing: where, how often, how many to keep.

    A final checkpoint is written when `every > 0` or `dir` is set; `export` also writes the final
    model as a native dlm_jax folder (`<out_dir>/model`, loadable with `DiffusionLM.from_pretrained`).
    """

    dir: str | None = None
    every: int = 0
    keep: int = 3
    async_save: bool = True
    resume: bool = True
    init_from: str | None = None
    export: bool = True

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise ValueError(f"checkpoint.every must be >= 0 and checkpoint.keep >= 1, got {self.every}/{self.keep}")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go: a run folder (JSONL), the console, wandb (offline or disabled by default)."""

    out_dir: str = "runs/default"
    wandb_mode: str = "disabled"
    wandb_project: str = "dlm-jax"
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("logging", "wandb_mode", self.wandb_mode, ("disabled", "offline", "online"))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: model + train + data + checkpoint + logging (+ an optional mesh section)."""

    model: ModelConfig
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    mesh: dict = dataclasses.field(default_factory=dict)
    model_preset: str | None = None
    model_explicit: tuple[str, ...] = ()  # model fields set in the YAML mapping or by --set (not by the preset)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out


_SECTIONS = {"train": TrainConfig, "data": DataConfig, "checkpoint": CheckpointConfig, "logging": LoggingConfig}
_TOP_KEYS = ("model", *_SECTIONS, "mesh")


class OverrideError(ValueError):
    """A bad `--set KEY=VALUE` (its message names the flag, not the YAML file)."""


def _coerce(section: str, name: str, kind: str, value: Any) -> Any:
    """YAML reads `1e-4` as a string and `3` where a float is meant: convert by the field's declared type."""
    base = kind.split("|")[0].strip()
    if value is None:
        if "None" not in kind:
            raise ValueError(f"{section}.{name}: expected {base}, got null")
        return value
    if kind.startswith(("str", "dict")):
        return value
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
    except (TypeError, ValueError):
        pass
    if base == "bool" and isinstance(value, bool):
        return value
    if base in ("float", "int", "bool"):
        raise ValueError(f"{section}.{name}: expected {base}, got {value!r}")
    return value


def _key_hint(section: str, name: str, known: list[str]) -> str:
    """'did you mean train.lr?' for a near miss, else the list of known keys."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {section}.{close[0]}?" if close else f"known {section} keys: {', '.join(sorted(known))}"


def _check_override(dotted: str, value: Any) -> None:
    """Refuse a `--set` whose key is not a field of its section, or whose value has the wrong type."""
    section, *rest = dotted.split(".")
    if not rest or section == "mesh" or (section == "model" and rest == ["preset"]):
        return  # `model=<preset>`, `model.preset=...`; mesh keys are checked by MeshConfig
    cls = ModelConfig if section == "model" else _SECTIONS[section]
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    name = rest[0]
    if name not in fields:
        raise OverrideError(f"--set {dotted}: unknown key; {_key_hint(section, name, list(fields))}")
    if len(rest) > 1:
        if not fields[name].startswith("dict"):
            raise OverrideError(f"--set {dotted}: {section}.{name} is a value, not a section")
        return
    try:
        _coerce(section, name, fields[name], value)
    except ValueError as e:
        raise OverrideError(f"--set {e}") from None


def _build(cls: type, section: str, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {type(data).__name__}")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key {section}.{unknown[0]}; {_key_hint(section, unknown[0], list(fields))}")
    return cls(**{k: _coerce(section, k, fields[k], v) for k, v in data.items()})


def _model_from(spec: Any) -> tuple[ModelConfig, str | None]:
    """(config, preset name or None) from a preset name or a mapping of fields (optionally with `preset`)."""
    if isinstance(spec, str):
        return ModelConfig.from_preset(spec), spec
    if not isinstance(spec, dict):
        raise ValueError("config section 'model' must be a preset name or a mapping of ModelConfig fields")
    spec = dict(spec)
    fields = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}
    spec = {k: _coerce("model", k, fields[k], v) if k in fields else v for k, v in spec.items()}
    preset = spec.pop("preset", None)
    if preset is not None:
        return ModelConfig.from_preset(preset, **spec), preset
    return ModelConfig.from_dict(spec), None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if keys[0] not in _TOP_KEYS:
        raise OverrideError(f"--set {dotted}: unknown section {keys[0]!r}; sections: {', '.join(_TOP_KEYS)}")
    node = tree
    for k in keys[:-1]:
        if isinstance(node.get(k), str) and k == "model":
            node[k] = {"preset": node[k]}
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise OverrideError(f"--set {dotted}: {k} is a value, not a section")
    node[keys[-1]] = value


def parse_dotted_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """`["train.lr=1e-4", "model=smdm_19m"]` -> `[("train.lr", 1e-4), ("model", "smdm_19m")]` (YAML-typed).

    Experiment overrides address any section by a dotted key, so values are typed by YAML here and checked
    against the section's fields when applied (`models.config.parse_overrides` types a model's runtime fields).
    """
    out = []
    for key, raw in split_pairs(pairs, "--set"):
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise OverrideError(f"--set {key}={raw}: {raw!r} is not a valid value") from None
        out.append((key, value))
    return out


def read_yaml(path: str | pathlib.Path) -> Any:
    """The parsed YAML file; a syntax error is one `FILE:LINE:COLUMN: problem` line."""
    path = pathlib.Path(path)
    try:
        with path.open() as f:
            return yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = "; ".join(str(x) for x in (e.problem, e.context) if x)
        raise ValueError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None


def experiment_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an `ExperimentConfig` from a plain mapping plus dotted `KEY=VALUE` overrides.

    Example:
        >>> cfg = experiment_from_dict({"model": "smdm_6m", "train": {"lr": 1e-3}}, ["train.max_steps=10"])
        >>> cfg.train.max_steps, cfg.model.hidden_size
        (10, 256)
    """
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; known sections: {list(_TOP_KEYS)}")
    for key, value in parse_dotted_overrides(overrides or []):
        _set_dotted(data, key, value)
        _check_override(key, value)
    if "model" not in data:
        raise ValueError("config has no 'model' section (a preset name or ModelConfig fields)")
    model, preset = _model_from(data["model"])
    explicit = tuple(sorted(k for k in data["model"] if k != "preset")) if isinstance(data["model"], dict) else ()
    sections = {name: _build(cls, name, data.get(name) or {}) for name, cls in _SECTIONS.items()}
    mesh = data.get("mesh") or {}
    if not isinstance(mesh, dict):
        raise ValueError("config section 'mesh' must be a mapping")
    return ExperimentConfig(model=model, mesh=mesh, model_preset=preset, model_explicit=explicit, **sections)


def load_experiment(path: str | pathlib.Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML and apply `--set` overrides.

    `path` is a YAML file, or names a shipped experiment config (`tiny_mdm`, or the repository path
    `configs/experiments/tiny_mdm.yaml` from any directory once the wheel is installed; see
    `dlm_jax.presets.find_config`).
    """
    found = presets.find_config("experiments", path)
    if found is None:
        raise FileNotFoundError(
            f"--config {path}: no such file, and not a shipped experiment config "
            f"(shipped: {', '.join(presets.available('experiments'))})"
        )
    path = found
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with sections {list(_TOP_KEYS)}")
    try:
        return experiment_from_dict(data, overrides)
    except OverrideError:
        raise
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
