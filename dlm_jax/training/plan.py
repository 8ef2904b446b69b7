"""Memory/throughput planner: compile the sharded train step against abstract inputs, read XLA's numbers."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.parallel.api import Partitioner, ShardedTrainStep, shard_train_step
from dlm_jax.parallel.mesh import MeshConfig
from dlm_jax.parallel.sharding import abstract_with_shardings, per_device_bytes
from dlm_jax.training.config import TrainConfig
from dlm_jax.training.optimizer import make_optimizer
from dlm_jax.training.state import TrainState, create_train_state
from dlm_jax.training.step import make_train_step

# objective name on the command line -> TrainConfig.objective, and the batch keys it reads.
OBJECTIVES = {
    "pretrain": ("mdm", ("input_ids",)),
    "sft": ("sft", ("input_ids", "attention_mask", "prompt_mask")),
    "adapt": ("diffullama", ("input_ids",)),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """Datasheet numbers per JAX device (a TPU chip or a GPU): dense bf16 peak FLOP/s and HBM bytes."""

    name: str
    bf16_flops: float
    hbm_bytes: float
    source: str


ACCELERATORS = (
    Accelerator("tpu-v4", 275e12, 32 * 2**30, "Cloud TPU v4 system architecture: 275 TFLOP/s bf16, 32 GiB HBM"),
    Accelerator("tpu-v5e", 197e12, 16 * 2**30, "Cloud TPU v5e docs: 197 TFLOP/s bf16, 16 GiB HBM"),
    Accelerator("tpu-v5p", 459e12, 95 * 2**30, "Cloud TPU v5p docs: 459 TFLOP/s bf16, 95 GiB HBM"),
    Accelerator("h100-sxm", 989e12, 80e9, "NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 80 GB"),
    Accelerator("h200-sxm", 989e12, 141e9, "NVIDIA H200 SXM datasheet: 989 TFLOP/s dense bf16, 141 GB"),
)


def model_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), the MFU convention (no remat recompute).

    6 * (matmul params incl. the output head) + 12 * layers * seq_len * heads * head_dim for
    bidirectional attention scores and values over the whole sequence.

    Example:
        >>> model_flops_per_token(ModelConfig.from_preset("smdm_1028m"), 2048) / 1e9
        7.390505472
    """
    embed = config.vocab_size * config.hidden_size
    norms = config.hidden_size * (2 * config.num_layers + 1) * (2 if config.norm_kind == "layernorm" else 1)
    matmul_params = config.non_embedding_params() - norms + embed  # the head multiplies, the lookup does not
    attention = 12 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return 6.0 * matmul_params + attention


def check_plan_args(model_config: ModelConfig, *, objective: str, seq_len: int, batch: int, grad_accum: int,
                    mfu: float) -> None:
    """One error naming the flag for a plan request that cannot be compiled or priced."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective={objective!r} is not one of {tuple(OBJECTIVES)}")
    for name, value in (("--seq-len", seq_len), ("--batch", batch), ("--grad-accum", grad_accum)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if seq_len > model_config.max_position_embeddings:
        raise ValueError(f"--seq-len={seq_len} exceeds the model's max_position_embeddings")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu={mfu} must be in (0, 1]")


def planned_train_config(objective: str, *, seq_len: int, batch: int, grad_accum: int) -> TrainConfig:
    """The `TrainConfig` of a planned step: the CLI's objective name, its batch shape, default optimiser."""
    train_objective, _ = OBJECTIVES[objective]
    return TrainConfig(
        objective=train_objective,
        batch_size=batch,
        seq_len=seq_len,
        grad_accum=grad_accum,
        anneal_steps=1000 if train_objective == "diffullama" else 0,
    )


def abstract_train_step(
    model_config: ModelConfig, train_config: TrainConfig, batch_keys: tuple[str, ...], partitioner: Partitioner
) -> tuple[ShardedTrainStep, TrainState, dict[str, jax.ShapeDtypeStruct]]:
    """The sharded train step with the abstract state and batch it takes (no weights allocated)."""
    optimizer = make_optimizer(train_config)
    abstract_state = jax.eval_shape(
        lambda key: create_train_state(decoder.init(key, model_config), optimizer, 0), jax.random.key(0)
    )
    shape = (train_config.batch_size, train_config.seq_len)
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in batch_keys}
    step = shard_train_step(
        make_train_step(model_config, train_config, optimizer), abstract_state, abstract_batch, model_config,
        partitioner,
    )
    return step, abstract_state, abstract_batch


def step_memory(step: ShardedTrainStep, abstract_state: TrainState, abstract_batch: dict) -> dict[str, dict[str, int]]:
    """Per-device bytes of one compiled step: exact shard sizes plus XLA's temporaries and its raw analysis."""
    compiled = step.step.lower(
        abstract_with_shardings(abstract_state, step.state_shardings),
        abstract_with_shardings(abstract_batch, step.batch_shardings),
    ).compile()
    mem = compiled.memory_analysis()
    per_device = {
        "params": per_device_bytes(abstract_state.params, step.state_shardings.params),
        "opt_state": per_device_bytes(abstract_state.opt_state, step.state_shardings.opt_state),
        "batch": per_device_bytes(abstract_batch, step.batch_shardings),
        "temporaries": int(mem.temp_size_in_bytes),
    }
    per_device["total"] = sum(per_device.values())
    analysis = {
        "argument": int(mem.argument_size_in_bytes),
        "output": int(mem.output_size_in_bytes),
        "alias": int(mem.alias_size_in_bytes),
        "temp": per_device["temporaries"],
    }
    return {"per_device_bytes": per_device, "xla_memory_analysis": analysis}


def throughput(flops_token: float, tokens: int, devices: int, total_bytes: int, mfu: float) -> dict[str, Any]:
    """Per accelerator of `ACCELERATORS`: whether `total_bytes` fits its HBM, tokens/s and step time at `mfu`."""
    return {
        acc.name: {
            "peak_bf16_flops": acc.bf16_flops,
            "hbm_bytes": acc.hbm_bytes,
            "fits": total_bytes <= acc.hbm_bytes,
            "tokens_per_s": mfu * acc.bf16_flops * devices / flops_token,
            "step_s": flops_token * tokens / (mfu * acc.bf16_flops * devices),
        }
        for acc in ACCELERATORS
    }


def plan_train_step(
    model_config: ModelConfig,
    *,
    seq_len: int,
    batch: int,
    mesh_config: MeshConfig,
    objective: str = "pretrain",
    grad_accum: int = 1,
    mfu: float = 0.4,
) -> dict[str, Any]:
    """Compile one sharded train step ahead of time (no weights allocated) and report per-device bytes.

    Uses whatever devices JAX sees (the CLI starts it with `--xla_force_host_platform_device_count`).
    Byte counts for params and optimiser state are exact shard sizes; temporaries come from XLA's
    `memory_analysis()` of the CPU compilation (TPU/GPU compilers fuse differently: a plan, not a
    measurement).

    Example:
        >>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        ...                   intermediate_size=64, mask_token_id=63)
        >>> plan = plan_train_step(cfg, seq_len=16, batch=8, mesh_config=MeshConfig(fsdp=-1))  # 8 devices
        >>> plan["model_params"], plan["per_device_bytes"]["params"]  # float32 weights, an eighth each
        (24736, 12368)
        >>> plan["per_device_bytes"]["temporaries"] > 0, plan["accelerators"]["tpu-v5e"]["fits"]
        (True, True)
    """
    check_plan_args(model_config, objective=objective, seq_len=seq_len, batch=batch, grad_accum=grad_accum, mfu=mfu)
    partitioner = Partitioner.create(mesh_config)
    train_config = planned_train_config(objective, seq_len=seq_len, batch=batch, grad_accum=grad_accum)
    step, abstract_state, abstract_batch = abstract_train_step(
        model_config, train_config, OBJECTIVES[objective][1], partitioner
    )
    memory = step_memory(step, abstract_state, abstract_batch)
    devices = partitioner.mesh.size
    tokens = batch * seq_len
    flops_token = model_flops_per_token(model_config, seq_len)
    return {
        "model_params": sum(x.size for x in jax.tree.leaves(abstract_state.params)),
        "objective": objective,
        "seq_len": seq_len,
        "batch": batch,
        "grad_accum": grad_accum,
        "mesh": dict(partitioner.mesh.shape),
        "devices": devices,
        "param_dtype": model_config.param_dtype,
        "compute_dtype": model_config.compute_dtype,
        "remat": model_config.remat,
        "remat_policy": model_config.remat_policy,
        **memory,
        "tokens_per_step": tokens,
        "flops_per_token": flops_token,
        "flops_per_step": flops_token * tokens,
        "mfu": mfu,
        "accelerators": throughput(flops_token, tokens, devices, memory["per_device_bytes"]["total"], mfu),
    }
