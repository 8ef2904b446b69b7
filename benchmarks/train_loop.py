"""`dlm-jax train`'s loop vs its bare step: do data loading, logging and checkpointing overlap the step?

The loop side runs `Trainer(exp).run()` on a built-in task (default: the tiny_mdm facts, packed, with
the train_step benchmark's model and batch: hidden 256, 4 layers, batch 8 x 256, float32) with
logging every `--log-every` steps and a checkpoint every `--ckpt-every`; its steady tokens/s come from
metrics.jsonl (the records between the second logged step and the last one before the final
evaluation). The bare side then calls the same trainer's compiled step `--steps` times on one batch
already on the device. Phases alternate (benchmarks/timing.py); the ratio loop / bare is the target
(>= 0.9). Writes benchmarks/results/train_loop.json.

    .venv/bin/python benchmarks/train_loop.py --steps 60 --repeats 2
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
from timing import Recorder, report

from dlm_jax.training.config import load_experiment
from dlm_jax.training.metrics_log import read_metrics
from dlm_jax.training.trainer import Trainer

MODEL = ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2",
         "model.intermediate_size=1024", "model.max_position_embeddings=256", "model.qkv_bias=true"]


def overrides(args, out_dir: str) -> list[str]:
    return [*MODEL, "data.pack=true", f"train.seq_len={args.seq}", f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}", f"train.log_every={args.log_every}", "train.eval_every=0",
            "train.warmup_steps=0", f"checkpoint.every={args.ckpt_every}", "checkpoint.export=false",
            f"logging.out_dir={out_dir}", *args.set]


def loop_tokens_per_s(records: list[dict], tokens_per_step: int) -> float:
    """Tokens/s between the second logged record and the last one before the final step (steady state)."""
    steady = [r for r in records if "tokens_per_s" in r][1:-1]
    if len(steady) < 2:
        raise SystemExit("too few logged steps for a steady rate: raise --steps or lower --log-every")
    first, last = steady[0], steady[-1]
    elapsed = [r["step"] * tokens_per_step / r["tokens_per_s"] for r in (first, last)]
    return (last["step"] - first["step"]) * tokens_per_step / (elapsed[1] - elapsed[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny_mdm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--ckpt-every", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="more KEY=VALUE overrides")
    ap.add_argument("--out", default="benchmarks/results/train_loop.json")
    args = ap.parse_args()
    rec = Recorder()
    tokens_per_step = args.batch * args.seq
    box: dict = {}

    def loop_phase() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(load_experiment(args.config, overrides(args, tmp)), progress=False)
            trainer.run()
            box["trainer"] = trainer
            return loop_tokens_per_s(read_metrics(pathlib.Path(tmp) / "metrics.jsonl"), tokens_per_step)

    def bare_phase() -> float:
        trainer = box["trainer"]
        tc = trainer.train_config
        batch = trainer.sharded_step.shard_batch(next(trainer.train_iter), global_batch_size=tc.batch_size)
        state, metrics = trainer.step_fn(trainer.state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = trainer.step_fn(state, batch)
        jax.block_until_ready(metrics)
        trainer.state = state
        return args.steps * tokens_per_step / (time.perf_counter() - start)

    rates = rec.interleave({"loop": loop_phase, "bare_step": bare_phase}, args.repeats)
    best = {name: max(values) for name, values in rates.items()}
    res = {"args": vars(args), "tokens_per_s": rates, "best": best, "loop_over_bare": best["loop"] / best["bare_step"],
           "timing": rec.summary()}
    print(f"loop {best['loop']:.0f} tokens/s, bare step {best['bare_step']:.0f} tokens/s: "
          f"loop / bare {res['loop_over_bare']:.2f} (phases: loop {[round(v) for v in rates['loop']]}, "
          f"bare {[round(v) for v in rates['bare_step']]})")
    report(res, args.out)


if __name__ == "__main__":
    main()
