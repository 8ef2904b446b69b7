"""`dlm-jax train`: run an experiment YAML (pretraining, adaptation or SFT) with dotted overrides."""

from __future__ import annotations

import argparse

from dlm_jax.parallel.distributed import add_distributed_args

EXAMPLE = """example:
  dlm-jax train --config configs/experiments/tiny_mdm.yaml
  dlm-jax train --config configs/experiments/tiny_mdm.yaml --set train.lr=1e-3 --set train.max_steps=200
  dlm-jax train --config configs/experiments/smdm_scaling.yaml --flops 1e15
  dlm-jax train --config configs/experiments/diffugpt_adapt.yaml --set checkpoint.init_from=gpt2_jax
  dlm-jax train --config configs/experiments/tiny_mdm.yaml --mesh data=2,fsdp=-1,tensor=1
  dlm-jax train --config configs/experiments/tiny_mdm.yaml --wandb-project my-project   # offline without a key
  # every host of a TPU VM pod / SLURM job runs the same command (see launch/):
  dlm-jax train --config configs/experiments/smdm_scaling.yaml --distributed auto
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model from an experiment YAML (MDM, SFT, DiffuLLaMA, Dream, AR)",
        description=(
            "Train from configs/experiments/<name>.yaml: sections model, train, data, checkpoint, logging "
            "(and mesh: data/fsdp/tensor/rules, default fsdp over all devices). Writes metrics.jsonl, loss.png, "
            "checkpoints/ (resumed automatically, onto any mesh; a finished run is left as it is) and model/ under "
            "logging.out_dir. With several processes every process runs this command; process 0 logs and exports."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True,
                   help="experiment YAML file, or a shipped config by name (e.g. tiny_mdm; see configs/experiments/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. train.lr=1e-4 or model=smdm_19m (repeatable)")
    p.add_argument("--flops", type=float, default=None,
                   help="compute budget C: max_steps = C / (6 N batch seq_len), N = non-embedding params")
    p.add_argument("--out", default=None, help="shorthand for --set logging.out_dir=OUT")
    p.add_argument("--wandb-project", default=None, metavar="NAME",
                   help="also log to this wandb project (online with an API key, else offline with a note)")
    p.add_argument("--mesh", default=None, metavar="AXIS=SIZE,...",
                   help="device mesh, e.g. fsdp=-1 or data=2,fsdp=4,tensor=1 (replaces the YAML's mesh sizes)")
    add_distributed_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dlm_jax.parallel.distributed import initialize_from_args, is_primary

    initialize_from_args(args)  # joins a multi-process job (if any) before JAX sees a device
    import jax

    from dlm_jax.parallel import MeshConfig
    from dlm_jax.training.config import load_experiment
    from dlm_jax.training.trainer import Trainer

    overrides = list(args.set)
    if args.mesh is not None:
        mesh = MeshConfig.parse(args.mesh)
        overrides += [f"mesh.{axis}={size}" for axis, size in zip(("data", "fsdp", "tensor"), mesh.shape, strict=True)]
    if args.flops is not None:
        if args.flops <= 0:
            raise ValueError(f"--flops must be > 0, got {args.flops}")
        overrides.append(f"train.flops={args.flops}")
    if args.out:
        overrides.append(f"logging.out_dir={args.out}")
    if args.wandb_project:
        overrides += [f"logging.wandb_project={args.wandb_project}", "logging.wandb_mode=online"]
    exp = load_experiment(args.config, overrides)
    trainer = Trainer(exp)
    tc = trainer.train_config
    mesh = ",".join(f"{a}={n}" for a, n in trainer.partitioner.mesh.shape.items())
    if trainer.finished:
        trainer.run()  # exports the model folder if a crash lost it; trains nothing
        trainer.close()
        if is_primary():
            print(f"run in {trainer.out_dir} already finished at step {trainer.resumed_from}; nothing to do "
                  f"(raise train.max_steps to train on, or pick another --out)")
        return 0
    if is_primary():
        print(f"model: {trainer.model_config.non_embedding_params():,} non-embedding params, objective "
              f"{tc.objective}, {tc.max_steps} steps x {tc.batch_size} x {tc.seq_len} tokens -> {trainer.out_dir}\n"
              f"mesh {mesh} over {jax.device_count()} devices, {jax.process_count()} process(es)")
        if trainer.resumed_from is not None:
            print(f"resumed from step {trainer.resumed_from} ({trainer.ckpt.directory})")
    result = trainer.run()
    trainer.close()
    if not is_primary():
        return 0
    last = next((r for r in reversed(result.history) if "loss" in r), {})
    msg = "interrupted (checkpoint saved)" if result.interrupted else "done"
    print(f"{msg}: step {int(result.state.step)}" + (f", loss {last['loss']:.4f}" if last else "")
          + (f", val ELBO/NLL {result.final_val:.4f}" if result.final_val is not None else ""))
    return 0
