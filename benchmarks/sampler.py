"""Dream sampler speed: dlm_jax's one-jit loop vs a PyTorch port of Dream's step loop over transformers' Qwen2.

Both decode the same random Dream-shaped model (weights exported from dlm_jax to an HF folder, loaded
into `Qwen2ForCausalLM` with an all-attend 4-D mask) with the same greedy algorithm; the script
asserts identical tokens, then reports tokens/s, the ratio, dlm_jax compile time, and model FLOP/s
as a fraction of this machine's measured float32 matmul rate. Prints a table, writes JSON. The
PyTorch port is tests/torch_reference.py, which the tests check dlm_jax against too. Timing follows
benchmarks/timing.py: dlm_jax and PyTorch at 1 thread and at all cores run in alternating phases, each
phase records the load, and a run on a busy machine is marked not publishable.

    .venv/bin/python benchmarks/sampler.py --layers 4 --hidden 256 --vocab 8192 --new 256 --steps 64

`--step-time ALG ...` instead times only dlm_jax per step for each listed alg, with the LM head on packed rows
and on all rows (no PyTorch run):

    .venv/bin/python benchmarks/sampler.py --step-time maskgit_plus topk_margin entropy --steps 16
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from timing import Recorder, report

from dlm_jax.api import DiffusionLM
from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.sampling import GenerateConfig, loop
from dlm_jax.sampling.rows import feeding_rows, row_buckets

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the PyTorch reference: tests/torch_reference.py

ALGS = ("maskgit_plus", "topk_margin", "entropy")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=704)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--alg", default="entropy", choices=ALGS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--head-scale", type=float, default=20.0, help="scale the LM head so logits are not flat")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: time 1 and all cores, keep the best)")
    p.add_argument("--json", default="benchmarks/results/sampler.json")
    p.add_argument("--step-time", nargs="+", choices=ALGS, metavar="ALG", help="only time dlm_jax per step, per alg")
    return p.parse_args()


def dream_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        family="dream",
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_layers=a.layers,
        num_heads=a.heads,
        num_kv_heads=a.kv_heads,
        intermediate_size=a.mlp,
        norm_eps=1e-6,
        rope_theta=1e6,
        max_position_embeddings=max(1024, a.prompt + a.new),
        qkv_bias=True,
        logit_shift=True,
        mask_token_id=a.vocab - 1,
        pad_token_id=a.vocab - 2,
        eos_token_id=a.vocab - 3,
    )


def forward_flops(cfg: ModelConfig, batch: int, length: int, head_rows: float | None = None) -> float:
    """Matmul FLOPs of one forward (projections, MLP, QK^T and PV on every row; the LM head on `head_rows`).

    `head_rows=None`: the head on all batch x length rows (a full forward, as the PyTorch loop runs it).
    """
    head_rows = batch * length if head_rows is None else head_rows
    attention = 4 * cfg.num_layers * length * length * cfg.num_heads * cfg.head_dim
    trunk = 2.0 * batch * length * cfg.non_embedding_params() + batch * attention
    return trunk + 2.0 * head_rows * cfg.hidden_size * cfg.vocab_size


def packed_head_rows(cfg: ModelConfig, gen: GenerateConfig, args: tuple) -> list[int]:
    """LM-head rows dlm_jax computes at each step: the bucket holding the rows that feed masked positions.

    Read from the recorded canvas history (masks before each step), for the executed-FLOPs count.
    """
    ids = np.asarray(args[1])
    history = np.asarray(loop._generate(*args, config=cfg, gen=gen.replace(output_history=True)).history)
    start = np.concatenate([ids, np.full((ids.shape[0], gen.max_new_tokens), cfg.mask_token_id, ids.dtype)], axis=1)
    before = np.concatenate([start[None], history[:-1]])  # the canvas each step starts from
    sizes = row_buckets(start.size)
    needed = [int(feeding_rows(jnp.asarray(x == cfg.mask_token_id), cfg.logit_shift).sum()) for x in before]
    return [min(size for size in sizes if size >= n) for n in needed]


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GFLOP/s of an n^3 matmul in XLA and in torch (the machine's measured rate)."""
    import torch

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best_jax = min(_timed(lambda: mm(a, a).block_until_ready()) for _ in range(repeats))
    t = torch.randn(n, n)
    torch.mm(t, t)
    best_torch = min(_timed(lambda: torch.mm(t, t)) for _ in range(repeats))
    flops = 2.0 * n**3
    return {"xla_gflops": flops / best_jax / 1e9, "torch_gflops": flops / best_torch / 1e9}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _identity_hook(step, x, logits):
    return x


def step_times(a: argparse.Namespace, cfg: ModelConfig, params, ids: np.ndarray, rec: Recorder) -> None:
    """Milliseconds per sampler step of dlm_jax for each alg in `a.step_time` (variants interleaved per repeat).

    Each alg runs twice: as users run it (LM head and statistics on packed rows) and with an identity
    token hook, which keeps the full [B, L, V] logits (what the sampler computed before row packing).
    """
    args = (params, jnp.asarray(ids), None, None, jax.random.key(0))
    compiled = {}
    for alg in a.step_time:
        for variant, hook in (("packed rows", None), ("all rows", _identity_hook)):
            gen = GenerateConfig(max_new_tokens=a.new, steps=a.steps, alg=alg, token_hook=hook)
            fn = loop._generate.lower(*args, config=cfg, gen=gen).compile()
            fn(*args).sequences.block_until_ready()
            compiled[f"{alg}, {variant}"] = fn
    def ms_per_step(fn) -> Callable[[], float]:
        def phase() -> float:
            start = time.perf_counter()
            fn(*args).sequences.block_until_ready()
            return (time.perf_counter() - start) / a.steps * 1e3

        return phase

    times = rec.interleave({name: ms_per_step(fn) for name, fn in compiled.items()}, a.repeats)
    load = os.getloadavg()
    width = max(len(name) for name in times)
    print(f"{'alg, variant':<{width}} | best ms/step | all ms/step")
    for name, ms in times.items():
        print(f"{name:<{width}} | {min(ms):12.1f} | {' '.join(f'{t:.1f}' for t in ms)}")
    print("load average (1/5/15 min): " + " / ".join(f"{v:.1f}" for v in load))
    out = report({"config": vars(a), "load_avg": load, "ms_per_step": times, "timing": rec.summary()}, a.json)
    print(f"wrote {out}")


def main() -> None:
    a = parse_args()
    rec = Recorder()
    cfg = dream_config(a)
    params = decoder.init(jax.random.key(0), cfg)
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * a.head_scale
    rng = np.random.default_rng(0)
    ids = rng.integers(0, a.vocab - 3, size=(a.batch, a.prompt)).astype(np.int32)
    length = a.prompt + a.new
    if a.step_time:
        step_times(a, cfg, params, ids, rec)
        return

    import torch

    from tests.torch_reference import dream_generate, qwen2_from_folder

    with tempfile.TemporaryDirectory() as tmp:
        DiffusionLM(cfg, params).save_pretrained(pathlib.Path(tmp) / "hf", format="hf")
        net = qwen2_from_folder(pathlib.Path(tmp) / "hf", attn_implementation="sdpa")

    gen = GenerateConfig(max_new_tokens=a.new, steps=a.steps, alg=a.alg)
    args = (params, jnp.asarray(ids), None, None, jax.random.key(0))
    start = time.perf_counter()
    compiled = loop._generate.lower(*args, config=cfg, gen=gen).compile()
    compile_s = time.perf_counter() - start
    jax_out = compiled(*args)
    thread_counts = [a.threads] if a.threads else sorted({1, os.cpu_count() or 1})
    dream_generate(net, ids, cfg.mask_token_id, a.new, 2, a.alg)  # warm-up (lazy init, allocator)
    outputs = {}

    def run_jax() -> float:
        start = time.perf_counter()
        outputs["jax"] = compiled(*args)
        outputs["jax"].sequences.block_until_ready()
        return time.perf_counter() - start

    def run_torch(n: int) -> Callable[[], float]:
        def phase() -> float:
            torch.set_num_threads(n)
            start = time.perf_counter()
            outputs["torch"] = dream_generate(net, ids, cfg.mask_token_id, a.new, a.steps, a.alg)
            return time.perf_counter() - start

        return phase

    # interleaved (benchmarks/timing.py), so all sides see the same machine load; each phase records it
    timed = rec.interleave({"jax": run_jax, **{f"torch_{n}t": run_torch(n) for n in thread_counts}}, a.repeats)
    jax_times, jax_out, torch_seq = timed["jax"], outputs["jax"], outputs["torch"]
    by_threads = {n: timed[f"torch_{n}t"] for n in thread_counts}
    threads = min(by_threads, key=lambda n: min(by_threads[n]))
    torch_times = by_threads[threads]

    load = os.getloadavg()
    jax_seq = np.asarray(jax_out.sequences)
    same = int((jax_seq == torch_seq).sum())
    if not np.array_equal(jax_seq, torch_seq):
        raise SystemExit(f"tokens differ: {jax_seq.size - same} of {jax_seq.size} positions")

    peak = matmul_peak()
    machine_peak = max(peak.values())
    tokens = a.batch * a.new
    flops = forward_flops(cfg, a.batch, length) * a.steps
    head_rows = packed_head_rows(cfg, gen, args)
    executed = sum(forward_flops(cfg, a.batch, length, rows) for rows in head_rows)
    jax_s, torch_s = min(jax_times), min(torch_times)
    result = {
        "config": vars(a),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": load},
        "jax_devices": str(jax.devices()),
        "identical_tokens": True,
        "tokens_generated": tokens,
        "dlm_jax": {"seconds": jax_s, "tokens_per_s": tokens / jax_s, "compile_s": compile_s, "all_s": jax_times},
        "pytorch": {
            "seconds": torch_s,
            "tokens_per_s": tokens / torch_s,
            "all_s": torch_times,
            "threads": threads,
            "all_s_by_threads": by_threads,
        },
        "speedup": torch_s / jax_s,
        "model_gflop_per_run": flops / 1e9,
        "matmul_peak_gflops": peak,
        "dlm_jax_fraction_of_peak": flops / jax_s / 1e9 / machine_peak,
        "dlm_jax_executed_gflop_per_run": executed / 1e9,
        "dlm_jax_head_rows_per_step": head_rows,
        "dlm_jax_executed_fraction_of_peak": executed / jax_s / 1e9 / machine_peak,
        "pytorch_fraction_of_peak": flops / torch_s / 1e9 / machine_peak,
        "timing": rec.summary(),
    }
    rows = [
        ("tokens (batch x new)", f"{tokens}"),
        ("dlm_jax tokens/s", f"{tokens / jax_s:.1f}"),
        *((f"PyTorch tokens/s ({n} thread(s))", f"{tokens / min(t):.1f}") for n, t in by_threads.items()),
        (f"speedup (best PyTorch: {threads} thread(s))", f"{torch_s / jax_s:.2f}x"),
        ("dlm_jax compile", f"{compile_s:.2f} s"),
        ("model GFLOP per generation (full forwards)", f"{flops / 1e9:.1f}"),
        ("measured f32 matmul peak (XLA / torch)", f"{peak['xla_gflops']:.1f} / {peak['torch_gflops']:.1f} GFLOP/s"),
        ("dlm_jax model FLOP/s / peak", f"{result['dlm_jax_fraction_of_peak']:.0%}"),
        ("dlm_jax executed GFLOP (head on packed rows)", f"{executed / 1e9:.1f}"),
        ("dlm_jax executed FLOP/s / peak", f"{result['dlm_jax_executed_fraction_of_peak']:.0%}"),
        ("PyTorch model FLOP/s / peak", f"{result['pytorch_fraction_of_peak']:.0%}"),
        ("identical tokens", "yes"),
        ("load average during run (1/5/15 min)", " / ".join(f"{v:.1f}" for v in load)),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'quantity':<{width}} | value\n{'-' * width}-|------")
    for key, value in rows:
        print(f"{key:<{width}} | {value}")
    out = report(result, a.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
