"""The model config of a run that starts from a checkpoint (`checkpoint.init_from`): whose fields win."""

from __future__ import annotations

from collections.abc import Iterable

from dlm_jax.models.config import RUNTIME_FIELDS, ModelConfig

# How the weights are run, never what they are: always the experiment's (its preset or explicit values).
EXECUTION_FIELDS = frozenset(
    {"attention_impl", "sampling_impl", "compute_dtype", "param_dtype", "softmax_dtype", "scan_layers", "remat"}
)


def shape_fields(config: ModelConfig) -> frozenset[str]:
    """Fields that change what a checkpoint's weights are (learned position tables make the context one)."""
    names = set(config.to_dict()) - RUNTIME_FIELDS
    if config.position_kind == "learned":
        names.add("max_position_embeddings")
    return frozenset(names)


def merge_init_config(
    checkpoint: ModelConfig, experiment: ModelConfig, explicit: Iterable[str], source: str
) -> ModelConfig:
    """The config to fine-tune `checkpoint` with, given the experiment's model section.

    - The checkpoint's shapes, token ids, logit shift and constants win over the preset; the
      preset only fills the ids the checkpoint leaves unset (None, e.g. a missing mask token id).
    - Execution settings (`EXECUTION_FIELDS`: dtypes, kernels, remat, scan) are the experiment's.
    - A field the user set explicitly (the YAML's model mapping or `--set model.KEY=...`) is taken
      when it does not change the weights' meaning (token ids, logit shift); an explicit shape field
      that disagrees with the checkpoint is one error naming every such field.

    Example:
        >>> preset = ModelConfig.from_preset("diffugpt_s")
        >>> ckpt = preset.replace(hidden_size=48, num_heads=4, num_kv_heads=4, head_dim=12,
        ...                       mask_token_id=None)  # a small GPT-2 without a mask token
        >>> merged = merge_init_config(ckpt, preset, (), "gpt2_small")
        >>> merged.hidden_size, merged.mask_token_id  # the checkpoint's shape, the preset's mask id
        (48, 50256)
        >>> merge_init_config(ckpt, preset, {"hidden_size"}, "gpt2_small")
        Traceback (most recent call last):
        ValueError: checkpoint.init_from=gpt2_small: the checkpoint has hidden_size=48 but model.hidden_size=768 ...
    """
    explicit = set(explicit)
    ours, theirs = experiment.to_dict(), checkpoint.to_dict()
    conflicts = [k for k in sorted(explicit & shape_fields(checkpoint)) if ours[k] != theirs[k]]
    if conflicts:
        detail = ", ".join(f"the checkpoint has {k}={theirs[k]!r} but model.{k}={ours[k]!r} is set" for k in conflicts)
        raise ValueError(f"checkpoint.init_from={source}: {detail}; drop those model keys (the checkpoint's shapes "
                         f"are used) or start from another checkpoint")
    shapes = shape_fields(checkpoint)
    merged = {
        key: ours[key]
        for key, value in theirs.items()
        if key in EXECUTION_FIELDS or (key not in shapes and (key in explicit or value is None))
    }
    return checkpoint.replace(**merged)
