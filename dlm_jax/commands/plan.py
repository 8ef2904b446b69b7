"""`dlm-jax plan`: per-device memory and throughput of a sharded train step, compiled on virtual CPU devices."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

EXAMPLE = """example:
  dlm-jax plan --model dream_v0_7b --seq-len 2048 --batch 64 --mesh fsdp=64 --objective sft
  dlm-jax plan --model smdm_1028m --seq-len 2048 --batch 256 --mesh data=4,fsdp=16 --objective pretrain --json
  dlm-jax plan --model diffullama_7b --seq-len 2048 --batch 64 --mesh fsdp=32,tensor=2 --objective adapt --mfu 0.35

Nothing is allocated: the step is compiled against jax.ShapeDtypeStruct inputs on
`data*fsdp*tensor` virtual CPU devices. Params/optimiser bytes are exact shard sizes;
temporaries come from XLA's memory analysis of the CPU compilation (a plan, not a measurement).
Throughput = MFU x datasheet dense bf16 peak x devices / (6N + 12 L S H d) FLOPs per token.
"""

_CHILD_ENV = "DLM_PLAN_ARGS"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="plan memory per device and tokens/s for a model, batch and mesh (compiles, allocates nothing)",
        description="Compile the sharded train step ahead of time against abstract inputs and report "
        "per-device bytes (params, optimiser state, temporaries) and estimated throughput.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model preset name (configs/models) or a ModelConfig YAML file")
    p.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
    p.add_argument("--batch", type=int, required=True, help="global batch (sequences per optimiser step)")
    p.add_argument("--mesh", default="fsdp=-1", help="AXIS=SIZE pairs over data,fsdp,tensor (e.g. fsdp=64,tensor=1)")
    p.add_argument("--devices", type=int, default=None, help="device count when the mesh uses -1")
    p.add_argument("--objective", choices=("pretrain", "sft", "adapt"), default="pretrain")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for tokens/s (0, 1]")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"), help="master weights")
    p.add_argument("--compute-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True, help="recompute layer activations")
    p.add_argument("--remat-policy", default="full", choices=("full", "dots"),
                   help="what --remat keeps: nothing (full) or the weight matmuls' outputs (dots)")
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="LOGICAL=AXES",
        help="override a sharding rule, e.g. kv_heads=none or batch=data+fsdp (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def parse_rules(pairs: list[str]) -> dict:
    """`["kv_heads=none", "batch=data+fsdp"]` -> `{"kv_heads": None, "batch": ("data", "fsdp")}`."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--rule {pair!r}: expected LOGICAL=AXES, e.g. kv_heads=none or batch=data+fsdp")
        value = value.strip()
        axes = None if value.lower() in ("", "none") else tuple(v.strip() for v in value.split("+"))
        out[key.strip()] = axes[0] if axes and len(axes) == 1 else axes
    return out


def _mesh_config(args: argparse.Namespace):
    import dataclasses

    from dlm_jax.parallel.mesh import MeshConfig
    from dlm_jax.parallel.rules import make_rules

    mesh = MeshConfig.parse(args.mesh)
    mesh = dataclasses.replace(mesh, rules=tuple(parse_rules(args.rule).items()))
    make_rules(mesh.rules)
    if -1 in mesh.shape:
        if args.devices is None:
            raise ValueError(f"--mesh {args.mesh!r} uses -1 (or leaves fsdp out): give --devices N")
        mesh = mesh.resolve(args.devices)
    elif args.devices is not None:
        mesh.resolve(args.devices)
    return mesh


def _model_config(args: argparse.Namespace):
    import pathlib

    from dlm_jax.models.config import ModelConfig

    overrides = {"param_dtype": args.param_dtype, "compute_dtype": args.compute_dtype, "remat": args.remat,
                 "remat_policy": args.remat_policy}
    if args.model.endswith((".yaml", ".yml")) or pathlib.Path(args.model).is_file():
        return ModelConfig.from_yaml(args.model).replace(**overrides)
    return ModelConfig.from_preset(args.model, **overrides)


def run(args: argparse.Namespace) -> int:
    """Validate cheaply here, then plan in a fresh interpreter that starts JAX with enough CPU devices."""
    mesh = _mesh_config(args)
    _model_config(args)
    devices = mesh.data * mesh.fsdp * mesh.tensor
    payload = {k: v for k, v in vars(args).items() if k != "func"}
    payload["mesh"] = f"data={mesh.data},fsdp={mesh.fsdp},tensor={mesh.tensor}"
    env = dict(os.environ)
    env[_CHILD_ENV] = json.dumps(payload)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return subprocess.run([sys.executable, "-m", "dlm_jax.commands.plan"], env=env).returncode


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def render(plan: dict) -> str:
    """Human-readable tables for one plan."""
    b = plan["per_device_bytes"]
    mesh = ",".join(f"{k}={v}" for k, v in plan["mesh"].items())
    lines = [
        f"{plan['model']}  {plan['objective']}  seq {plan['seq_len']} x batch {plan['batch']}  mesh {mesh} "
        f"({plan['devices']} devices)  params {plan['model_params'] / 1e9:.2f}B {plan['param_dtype']}, "
        f"compute {plan['compute_dtype']}, remat={plan['remat']} ({plan['remat_policy']})",
        "",
        "per device (GiB):  params  opt_state  batch  temporaries  total",
        f"                   {_gib(b['params']):>6}  {_gib(b['opt_state']):>9}  {_gib(b['batch']):>5}  "
        f"{_gib(b['temporaries']):>11}  {_gib(b['total']):>5}",
        "",
        f"FLOPs/step {plan['flops_per_step']:.3e} ({plan['flops_per_token']:.3e}/token); "
        f"at MFU {plan['mfu']:.2f} with {plan['devices']} devices:",
        "accelerator   bf16 TFLOP/s  HBM GiB  fits  tokens/s      step s",
    ]
    for name, a in plan["accelerators"].items():
        lines.append(
            f"{name:<12}  {a['peak_bf16_flops'] / 1e12:>12.0f}  {a['hbm_bytes'] / 2**30:>7.0f}  "
            f"{'yes' if a['fits'] else 'NO':>4}  {a['tokens_per_s']:>12,.0f}  {a['step_s']:>6.2f}"
        )
    lines.append("(planned on CPU XLA, not measured; peaks are dense bf16 datasheet numbers per chip/GPU)")
    return "\n".join(lines)


def _child() -> int:
    args = argparse.Namespace(**json.loads(os.environ[_CHILD_ENV]))
    try:
        from dlm_jax.training.plan import plan_train_step

        plan = plan_train_step(
            _model_config(args),
            seq_len=args.seq_len,
            batch=args.batch,
            mesh_config=_mesh_config(args),
            objective=args.objective,
            grad_accum=args.grad_accum,
            mfu=args.mfu,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"dlm-jax plan: error: {e}", file=sys.stderr)
        return 2
    plan = {"model": args.model, **plan}
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
