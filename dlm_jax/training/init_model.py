"""The model config a run trains: whose fields win when it starts from a checkpoint (`checkpoint.init_from`),
and whether the training rows fit the model's context."""

from __future__ import annotations

from collections.abc import Iterable

from dlm_jax.models.config import RUNTIME_FIELDS, ModelConfig

TOKEN_ID_FIELDS = frozenset({"mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"})

# How the weights are run, never what they are: always the experiment's (its preset or explicit values).
EXECUTION_FIELDS = frozenset(
    {"attention_impl", "sampling_impl", "compute_dtype", "param_dtype", "softmax_dtype", "scan_layers", "remat",
     "remat_policy"}
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
      preset only fills the ids the checkpoint leaves unset (None, e.g. a missing mask token id),
      and only with ids inside the checkpoint's vocabulary (else they stay unset, for the
      tokenizer or an explicit `model.*_token_id` to fill).
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
        >>> small = ckpt.replace(vocab_size=256, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        >>> merge_init_config(small, preset, (), "tiny_gpt2").mask_token_id is None  # 50256 is not a token of it
        True
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
    for key in TOKEN_ID_FIELDS - explicit:
        if merged.get(key) is not None and not 0 <= merged[key] < checkpoint.vocab_size:
            del merged[key]  # a preset id outside this vocabulary means nothing here
    return checkpoint.replace(**merged)


def check_context(model: ModelConfig, seq_len: int, init_from: str | None = None) -> None:
    """One clear error when training rows of `seq_len` tokens do not fit a learned position table.

    RoPE models train past their nominal context; a learned table has no rows beyond
    `max_position_embeddings` (the lookup would read garbage instead of failing).

    Example:
        >>> gpt2 = ModelConfig(family="gpt2", vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
        ...                    intermediate_size=64, position_kind="learned", max_position_embeddings=128)
        >>> check_context(gpt2, 128)
        >>> check_context(gpt2, 1024, "gpt2_jax")
        Traceback (most recent call last):
        ValueError: train.seq_len=1024 exceeds max_position_embeddings=128 of checkpoint.init_from=gpt2_jax ...
    """
    limit = model.max_position_embeddings
    if model.position_kind == "learned" and seq_len > limit:
        owner = f"checkpoint.init_from={init_from}" if init_from else "the model"
        raise ValueError(f"train.seq_len={seq_len} exceeds max_position_embeddings={limit} of {owner} (learned "
                         f"positions have no rows past it); set train.seq_len<={limit}")
