"""Training-step speed: dlm-jax's jitted MDM step (AdamW) vs the same step in PyTorch + transformers Qwen2.

Same model (Qwen2 shape: q/k/v bias, GQA, SwiGLU, RMSNorm, RoPE, untied head), same batch, same
loss (masked CE / p_mask / (B*L), t ~ U(0,1)), same optimiser (AdamW, clip 1.0), float32.
PyTorch runs the model bidirectionally through a 4D all-attend attention mask.
Timing follows benchmarks/timing.py: dlm-jax, PyTorch at 1 thread and PyTorch at all cores run in
alternating phases (best phase each; the speed-up is against the faster PyTorch), every phase records
the load, and a run on a busy machine is marked not publishable. `--breakdown` adds the forward loss
and its `jax.grad` as two more interleaved sides (the grad / forward ratio). Prints a table and
writes benchmarks/results/train_step.json.

    .venv/bin/python benchmarks/train_step.py --steps 5 --breakdown
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import Recorder, report, torch_sides

from dlm_jax.models import decoder
from dlm_jax.models.config import ModelConfig
from dlm_jax.training.config import TrainConfig
from dlm_jax.training.optimizer import make_optimizer
from dlm_jax.training.state import create_train_state
from dlm_jax.training.step import make_loss_fn, make_train_step

EPS = 1e-3


def model_config(args) -> ModelConfig:
    return ModelConfig(
        family="dream", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=args.heads, num_kv_heads=args.kv_heads, intermediate_size=4 * args.hidden, qkv_bias=True,
        rope_theta=10000.0, max_position_embeddings=args.seq, mask_token_id=args.vocab - 1,
        compute_dtype=args.dtype, param_dtype="float32", scan_layers=not args.unroll,
        remat=args.remat != "none", remat_policy="full" if args.remat == "none" else args.remat,
    )


def train_config(args) -> TrainConfig:
    return TrainConfig(objective="mdm", batch_size=args.batch, seq_len=args.seq, lr=1e-4, min_lr=1e-4,
                       warmup_steps=0, weight_decay=0.1, clip=1.0, max_steps=1000)


def jax_stepper(cfg: ModelConfig, args, ids: np.ndarray):
    """A zero-argument callable running one jitted MDM train step (compiled here), and facts about it."""
    tc = train_config(args)
    params = jax.jit(lambda k: decoder.init(k, cfg))(jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(params))
    box = {"state": create_train_state(params, make_optimizer(tc), 0)}
    step = jax.jit(make_train_step(cfg, tc), donate_argnums=0)
    batch = {"input_ids": jnp.asarray(ids)}

    def run():
        box["state"], m = step(box["state"], batch)
        return m

    t0 = time.perf_counter()
    jax.block_until_ready(run())
    info = {"compile_s": time.perf_counter() - t0, "params": int(n)}
    return run, lambda m: float(jax.block_until_ready(m)["loss"]), info


def jax_breakdown(cfg: ModelConfig, args, ids: np.ndarray) -> dict:
    """Zero-argument callables for the MDM loss alone (forward) and its `jax.grad` (forward + backward), compiled."""
    loss_fn = make_loss_fn(cfg, train_config(args))
    params = jax.jit(lambda k: decoder.init(k, cfg))(jax.random.key(0))
    batch = {"input_ids": jnp.asarray(ids)}

    def loss(p, b):
        return loss_fn(p, b, jax.random.key(1))[0]

    out = {}
    for name, fn in (("jax_forward", loss), ("jax_grad", jax.grad(loss))):
        compiled = jax.jit(fn).lower(params, batch).compile()
        out[name] = lambda c=compiled: c(params, batch)
    return out


def _blocked(result) -> float:
    jax.block_until_ready(result)
    return 0.0


def torch_stepper(cfg: ModelConfig, args, ids: np.ndarray):
    """The same step in PyTorch: transformers Qwen2 made bidirectional by an all-attend 4D mask."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hf = Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, rope_theta=cfg.rope_theta, max_position_embeddings=args.seq,
        tie_word_embeddings=False, rms_norm_eps=cfg.norm_eps, attention_dropout=0.0,
    )
    model = Qwen2ForCausalLM(hf).train()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    x0 = torch.as_tensor(ids, dtype=torch.long)
    b, length = x0.shape
    all_attend = torch.zeros((b, 1, length, length), dtype=dtype)  # additive 4D mask: every pair attends
    mask_id = cfg.mask_token_id

    def step():
        t = torch.rand(b)
        p = (1 - EPS) * t + EPS
        masked = torch.rand(b, length) < p[:, None]
        noisy = torch.where(masked, torch.full_like(x0, mask_id), x0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(input_ids=noisy, attention_mask=all_attend).logits
        ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x0.reshape(-1),
                                               reduction="none").reshape(b, length)
        loss = (ce * masked / p[:, None]).sum() / (b * length)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    info = {"params": int(sum(p.numel() for p in model.parameters())), "torch": torch.__version__}
    return step, lambda loss: float(loss.detach()), info


def time_phase(run, finish, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds per step over `steps` steps after `warmup`, and the last loss."""
    for _ in range(max(1, warmup)):
        out = run()
    finish(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = run()
    loss = finish(out)
    return (time.perf_counter() - t0) / steps, loss


def matmul_rate(n: int = 2048, dtype: str = "float32") -> float:
    """Measured FLOP/s of one large jitted matmul on this machine (the practical peak)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        out = f(a)
    jax.block_until_ready(out)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def model_flops_per_step(cfg: ModelConfig, batch: int, seq: int) -> float:
    """6 N T for the weights (N incl. the head; embedding lookups excluded) + 12 layers d L T for attention."""
    n = cfg.non_embedding_params() + cfg.hidden_size * cfg.vocab_size
    tokens = batch * seq
    return 6 * n * tokens + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq * tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating timing phases per side")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="also time the forward loss and its grad (dlm-jax)")
    ap.add_argument("--unroll", action="store_true", help="ModelConfig.scan_layers=False (unrolled layer loop)")
    ap.add_argument("--remat", default="none", choices=("none", "full", "dots"),
                    help="ModelConfig.remat off, or on with this remat_policy")
    ap.add_argument("--out", default="benchmarks/results/train_step.json")
    args = ap.parse_args()
    rec = Recorder()
    cfg = model_config(args)
    ids = np.random.default_rng(0).integers(0, args.vocab - 1, size=(args.batch, args.seq)).astype(np.int32)
    tokens = args.batch * args.seq
    res = {"args": vars(args), "device": str(jax.devices()[0]), "platform": platform.platform()}

    def phase(run, finish):
        return lambda: time_phase(run, finish, args.steps, args.warmup)[0]

    jax_run, jax_finish, res["jax"] = jax_stepper(cfg, args, ids)
    sides = {"jax": phase(jax_run, jax_finish)}
    if args.breakdown:
        sides.update({name: phase(run, _blocked) for name, run in jax_breakdown(cfg, args, ids).items()})
    if not args.skip_torch:
        torch_run, torch_finish, res["torch"] = torch_stepper(cfg, args, ids)
        sides.update(torch_sides(phase(torch_run, torch_finish)))
    peaks = [matmul_rate(dtype=args.dtype)]
    phases = rec.interleave(sides, args.repeats)
    peaks.append(matmul_rate(dtype=args.dtype))
    flops = model_flops_per_step(cfg, args.batch, args.seq)
    peak = max(peaks)
    res.update(model_flops_per_step=flops, matmul_flops_per_s=peak, matmul_samples=peaks)
    rows = []
    for name, times in phases.items():
        sec = min(times)
        r = res.setdefault(name, {})
        r.update(sec_per_step=sec, phases=times)
        if name == "jax" or name.startswith("torch_"):
            r.update(tokens_per_s=tokens / sec, model_flops_per_s=flops / sec, share_of_matmul_rate=flops / sec / peak)
            rows.append((name, r))
    torch_names = [n for n in phases if n.startswith("torch_")]
    if torch_names:
        best = min(torch_names, key=lambda n: res[n]["sec_per_step"])
        res["torch_best"] = best
        res["speedup_jax_over_torch"] = res[best]["sec_per_step"] / res["jax"]["sec_per_step"]
    if args.breakdown:
        res["grad_over_forward"] = res["jax_grad"]["sec_per_step"] / res["jax_forward"]["sec_per_step"]
    res["timing"] = rec.summary()
    print(f"model: {res['jax']['params']:,} params, batch {args.batch} x seq {args.seq}, {args.dtype}, "
          f"scan_layers={cfg.scan_layers}, device {res['device']}; measured matmul rate {peak / 1e9:.1f} GFLOP/s")
    print(f"{'side':9s} {'ms/step':>9s} {'tokens/s':>10s} {'model GFLOP/s':>14s} {'% matmul':>9s}  phases (ms)")
    for name, r in rows:
        phases_ms = " ".join(f"{t * 1e3:.0f}" for t in r["phases"])
        gflops = r["model_flops_per_s"] / 1e9
        print(f"{name:9s} {r['sec_per_step'] * 1e3:9.1f} {r['tokens_per_s']:10.0f} {gflops:14.2f} "
              f"{100 * r['share_of_matmul_rate']:8.1f}%  {phases_ms}")
    if "speedup_jax_over_torch" in res:
        print(f"speed-up (jax / best torch = {res['torch_best']}, tokens per second): "
              f"{res['speedup_jax_over_torch']:.2f}x")
    if args.breakdown:
        print(f"forward loss {res['jax_forward']['sec_per_step'] * 1e3:.1f} ms, grad "
              f"{res['jax_grad']['sec_per_step'] * 1e3:.1f} ms: grad / forward {res['grad_over_forward']:.2f}x")
    report(res, args.out)


if __name__ == "__main__":
    main()
