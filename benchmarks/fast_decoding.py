"""Fast decoding at equal accuracy: block-wise decoding, parallel rules, K/V caches, against the exact sampler.

Part 1 trains (or reuses, from `--cache`) a small Dream-style MDM (shifted logits) on the built-in
letter-shift task (`dlm_jax.data.letter_shifts`: a random 8-letter word -> 8 words, each the one before
moved one letter on, a 71-token answer, EOS-padded to a 256-token canvas as Dream's SFT does), then decodes
unseen words with each mode and reports accuracy (every letter of the answer right), model calls (`nfe`),
full-forward equivalents (the trunk's FLOPs in forwards over the whole canvas), wall time and tokens/s
(canvas positions decoded per second):

    exact          one token per step, steps = canvas length (Dream's sampler, maskgit_plus, greedy)
    llada_blocks   LLaDA's semi-autoregressive blocks (low_confidence, block_length, one token per step)
    +threshold     Fast-dLLM's parallel rule: commit every position of the block with probability >= tau
    +prefix_cache  K/V of the prompt and finished blocks reused within a block
    +dual_cache    the masked suffix cached too
    +suffix_window masked positions far past the block left out of attention
    +early_exit    rows stop once they have decoded EOS
    entropy_budget EB-Sampler's rule in place of the threshold (with the caches, window and early exit)

A mode whose knobs this checkout's `GenerateConfig` lacks (or that raises) is reported as not available.
Part 2 (`--step-time`) times one decoding step of each mode on a random Dream-shaped model (small width) at
canvas 256/512/1024/2048: how the cost of a step grows with length.

Writes a rich table, JSON (`--json`) and a PNG of accuracy vs tokens/s (`--png`).

    .venv/bin/python benchmarks/fast_decoding.py --cache /tmp/fast_decoding_cache
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time
from typing import Any

import numpy as np

from dlm_jax.api import DiffusionLM
from dlm_jax.data.letter_shifts import check_shift, shift_records
from dlm_jax.data.tokenizer import load_tokenizer
from dlm_jax.models.config import ModelConfig
from dlm_jax.sampling import GenerateConfig

KNOBS = {field.name for field in dataclasses.fields(GenerateConfig)}
TRAIN_SEED, EVAL_SEED = 1, 7_777


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    settings: dict[str, Any]


def modes(canvas: int, block: int, tau: float, gamma: float, window: int) -> list[Mode]:
    """The ladder of the issue: each row adds one knob to the row before (entropy budget swaps the rule); then
    LLaDA's one-token-per-step blocks with the dual cache, and with early exit."""
    blocks = {"alg": "low_confidence", "block_length": block, "steps": canvas}
    threshold = {"alg": "low_confidence", "block_length": block, "threshold": tau}
    prefix = {**threshold, "cache": "prefix"}
    dual = {**threshold, "cache": "dual"}
    window_ = {**dual, "suffix_window": window}
    early = {**window_, "early_exit": True}
    budget = {**{k: v for k, v in early.items() if k != "threshold"}, "entropy_budget": gamma}
    return [
        Mode("exact", {"alg": "maskgit_plus", "steps": canvas}),
        Mode("llada_blocks", blocks),
        Mode("+threshold", threshold),
        Mode("+prefix_cache", prefix),
        Mode("+dual_cache", dual),
        Mode("+suffix_window", window_),
        Mode("+early_exit", early),
        Mode("entropy_budget", budget),
        Mode("llada_blocks+dual_cache", {**blocks, "cache": "dual"}),
        Mode("llada_blocks+dual+early_exit", {**blocks, "cache": "dual", "early_exit": True}),
    ]


def missing_knobs(settings: dict[str, Any]) -> list[str]:
    return sorted(set(settings) - KNOBS)


# ---- part 1: train (or reuse) the task model --------------------------------------------------------

def train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the trained model depends on: the cache is reused only when all of it matches."""
    return {
        "shift": args.shift, "canvas": args.canvas, "hidden": args.hidden, "layers": args.layers,
        "train_steps": args.train_steps, "batch": args.batch, "lr": args.lr, "train_examples": args.train_examples,
        "seed": args.seed, "init_from": args.init_from,
    }


def train_or_load(args: argparse.Namespace) -> tuple[DiffusionLM, Any, dict[str, Any]]:
    """The trained model and tokenizer from `args.cache` when its settings match, else a fresh training run."""
    from dlm_jax.training.config import experiment_from_dict
    from dlm_jax.training.trainer import Trainer

    cache = pathlib.Path(args.cache)
    settings = train_settings(args)
    stamp = cache / "settings.json"
    folder = cache / "run" / "model"
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == settings and folder.is_dir():
        info = json.loads(stamp.read_text())
        return DiffusionLM.from_pretrained(folder), load_tokenizer(folder), {**info, "reused": True}
    cache.mkdir(parents=True, exist_ok=True)
    data = cache / "train.jsonl"
    records = shift_records(args.train_examples, seed=TRAIN_SEED, shift=args.shift)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    prompt_len = len(records[0]["input"]) + 1  # one char token per letter, then the pairs format's newline
    heads = max(4, args.hidden // 32)
    shape = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": heads,
             "num_kv_heads": max(1, heads // 2), "intermediate_size": 4 * args.hidden, "vocab_size": 32,
             "max_position_embeddings": prompt_len + args.canvas, "logit_shift": True}
    exp = experiment_from_dict({
        "model": {"family": "dream", **({} if args.init_from else shape)},  # init_from: the checkpoint's shapes
        "train": {"objective": "dream", "sft_pad_loss": True, "max_steps": args.train_steps,
                  "batch_size": args.batch, "seq_len": prompt_len + args.canvas, "lr": args.lr,
                  "min_lr": args.lr / 10, "warmup_steps": min(100, args.train_steps // 10), "weight_decay": 0.0,
                  "log_every": max(1, args.train_steps // 20), "seed": args.seed},
        "data": {"kind": "jsonl", "path": str(data), "format": "pairs", "options": {"level": "char"}},
        "checkpoint": {"every": 0, "resume": False, "export": True, "init_from": args.init_from},
        "logging": {"out_dir": str(cache / "run"), "progress": False},
    })
    start = time.perf_counter()
    result = Trainer(exp, progress=False).run()
    seconds = time.perf_counter() - start
    losses = [(row["step"], row["loss"]) for row in result.history if "loss" in row]
    info = {"settings": settings, "train_seconds": round(seconds, 1), "loss_curve": losses,
            "load_avg_after_training": os.getloadavg()[0]}
    stamp.write_text(json.dumps(info, indent=1))
    return DiffusionLM.from_pretrained(folder), load_tokenizer(folder), {**info, "reused": False}


# ---- part 1: accuracy and speed per mode ------------------------------------------------------------

def eval_problems(num: int, shift: int) -> list[dict[str, str]]:
    """`num` words drawn with the evaluation seed (unseen in training: 26^8 possible words)."""
    return shift_records(num, seed=EVAL_SEED, shift=shift)


def run_mode(model: DiffusionLM, tokenizer: Any, problems: list[dict[str, str]], mode: Mode,
             args: argparse.Namespace) -> dict[str, Any]:
    """Decode every problem with `mode` in batches; the first batch compiles, the others are timed."""
    missing = missing_knobs(mode.settings)
    if missing:
        return {"mode": mode.name, "available": False, "why": f"no knob {', '.join(missing)} in this checkout"}
    prompts = np.array([tokenizer.encode(p["input"] + "\n") for p in problems], np.int32)
    correct, letter_ok, nfe, fwd, tps = [], [], [], [], []
    timed_seconds, timed_rows, compile_seconds = 0.0, 0, 0.0
    kw = {"max_new_tokens": args.canvas, "temperature": 0.0, "top_k": None, **mode.settings}
    for i in range(0, len(problems), args.eval_batch):
        ids = prompts[i:i + args.eval_batch]
        start = time.perf_counter()
        try:
            out = model.diffusion_generate(ids, **kw)
        except (ValueError, TypeError, NotImplementedError) as e:
            return {"mode": mode.name, "available": False, "why": f"{type(e).__name__}: {e}"}
        seconds = time.perf_counter() - start
        if i == 0:
            compile_seconds = seconds
        else:
            timed_seconds += seconds
            timed_rows += len(ids)
        for row, problem in zip(out.completions, problems[i:i + args.eval_batch], strict=True):
            text = tokenizer.decode(row.tolist())
            correct.append(check_shift(problem["input"], text, shift=args.shift))
            want, got = problem["output"], text.strip()
            letter_ok += [g == w for g, w in zip(got.ljust(len(want)), want, strict=False)]
        nfe += out.nfe.tolist()
        fwd += (out.forward_equivalents if out.forward_equivalents is not None else out.nfe).tolist()
        if out.tokens_per_step is not None:
            tps += out.tokens_per_step.tolist()
    per_row = timed_seconds / timed_rows if timed_rows else compile_seconds / len(problems)
    return {
        "mode": mode.name, "available": True, "settings": mode.settings,
        "accuracy": float(np.mean(correct)), "letter_accuracy": float(np.mean(letter_ok)), "problems": len(correct),
        "nfe": float(np.mean(nfe)), "forward_equivalents": float(np.mean(fwd)),
        "tokens_per_step": float(np.mean(tps)) if tps else args.canvas / float(np.mean(nfe)),
        "seconds_per_problem": per_row, "tokens_per_second": args.canvas / per_row,
        "first_batch_seconds": compile_seconds,
    }


# ---- part 2: per-step time against canvas length -------------------------------------------------------

def step_time_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Wall seconds per model call of each mode on a random Dream-shaped model, per canvas length.

    The LM head is scaled so the random model is confident: the threshold/budget rules then commit whole
    blocks, and each mode runs a handful of steps whatever the canvas (exact decoding: `--exact-steps`).
    """
    config = ModelConfig(family="dream", vocab_size=args.step_vocab, hidden_size=args.step_hidden,
                         num_layers=args.step_layers, num_heads=4, num_kv_heads=2,
                         intermediate_size=4 * args.step_hidden, max_position_embeddings=4096,
                         mask_token_id=args.step_vocab - 1, eos_token_id=args.step_vocab - 2)
    model = DiffusionLM.init(config, seed=0)
    model.params = {**model.params, "lm_head": {"kernel": model.params["lm_head"]["kernel"] * args.head_scale}}
    prompt = np.random.default_rng(0).integers(0, args.step_vocab - 2, size=(1, 16)).astype(np.int32)
    rows = []
    for canvas in args.canvases:
        for mode in modes(canvas, args.block, args.tau, args.gamma, args.window):
            settings = dict(mode.settings)
            if mode.name == "exact":
                settings["steps"] = args.exact_steps
            elif mode.name == "llada_blocks":
                settings["steps"] = canvas // args.block
            missing = missing_knobs(settings)
            if missing:
                rows.append({"mode": mode.name, "canvas": canvas, "available": False,
                             "why": f"no knob {', '.join(missing)}"})
                continue
            kw = {"max_new_tokens": canvas, "temperature": 0.0, "top_k": None, **settings}
            try:
                model.diffusion_generate(prompt, **kw)  # compile
                seconds = float("inf")
                for _ in range(args.repeats):  # the best of a few runs: the machine is shared
                    start = time.perf_counter()
                    out = model.diffusion_generate(prompt, **kw)
                    seconds = min(seconds, time.perf_counter() - start)
            except (ValueError, TypeError, NotImplementedError) as e:
                rows.append({"mode": mode.name, "canvas": canvas, "available": False, "why": f"{e}"})
                continue
            nfe = float(out.nfe.mean())
            rows.append({"mode": mode.name, "canvas": canvas, "available": True, "nfe": nfe,
                         "seconds": seconds, "ms_per_call": 1000 * seconds / nfe})
            print(f"step time: canvas {canvas} {mode.name}: {nfe:.0f} calls, {1000 * seconds / nfe:.1f} ms/call",
                  flush=True)
    return rows


# ---- output -------------------------------------------------------------------------------------------

def print_tables(results: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    exact = next((r for r in results if r["mode"] == "exact" and r["available"]), None)
    table = Table(title="fast decoding at equal accuracy (letter shifts, unseen words)")
    columns = ("mode", "accuracy", "letters right", "model calls", "fwd equiv.", "tokens/step", "s/problem", "tokens/s",
               "speedup")
    for col in columns:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in results:
        if not r["available"]:
            table.add_row(r["mode"], "not available", "", "", "", "", "", "", r["why"][:40])
            continue
        speedup = f"{exact['seconds_per_problem'] / r['seconds_per_problem']:.2f}x" if exact else ""
        table.add_row(r["mode"], f"{100 * r['accuracy']:.1f}%", f"{100 * r['letter_accuracy']:.1f}%", f"{r['nfe']:.1f}",
                      f"{r['forward_equivalents']:.1f}",
                      f"{r['tokens_per_step']:.2f}", f"{r['seconds_per_problem']:.3f}",
                      f"{r['tokens_per_second']:.0f}", speedup)
    if results:
        console.print(table)
    if steps:
        canvases = sorted({r["canvas"] for r in steps})
        table = Table(title="ms per model call, random Dream-shaped model")
        table.add_column("mode")
        for c in canvases:
            table.add_column(str(c), justify="right")
        for name in dict.fromkeys(r["mode"] for r in steps):
            cells = []
            for c in canvases:
                r = next(r for r in steps if r["mode"] == name and r["canvas"] == c)
                cells.append(f"{r['ms_per_call']:.1f}" if r["available"] else "n/a")
            table.add_row(name, *cells)
        console.print(table)


def plot(results: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>Px*hH"
    for i, r in enumerate(r for r in results if r["available"]):
        tau = r["settings"].get("threshold")
        ax.scatter(r["tokens_per_second"], 100 * r["accuracy"], marker=markers[i % len(markers)], s=60,
                   label=r["mode"] if tau is None else f"{r['mode']} (tau {tau})", alpha=0.8)
    ax.legend(fontsize=8, loc="best")
    ax.set_ylim(-3, 103)
    ax.set_xscale("log")
    ax.set_xlabel("canvas tokens decoded per second (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs decoding speed, one point per mode")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="/tmp/dlm_jax_fast_decoding", help="trained run reused from here")
    p.add_argument("--shift", type=int, default=1, help="letters each word moves on from the one before")
    p.add_argument("--canvas", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=2500)
    p.add_argument("--train-examples", type=int, default=80_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", help="start training from this model folder (e.g. an earlier run's model)")
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--tau", type=float, default=0.9, help="threshold rule")
    p.add_argument("--gamma", type=float, default=0.1, help="entropy budget")
    p.add_argument("--window", type=int, default=32, help="suffix window")
    p.add_argument("--only", nargs="+", help="run only these modes (by name)")
    p.add_argument("--step-time", action="store_true", help="also time a step per mode at each --canvases length")
    p.add_argument("--no-accuracy", action="store_true", help="skip part 1 (training and the accuracy table)")
    p.add_argument("--canvases", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--exact-steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per (mode, canvas) in part 2; the best counts")
    p.add_argument("--step-hidden", type=int, default=64)
    p.add_argument("--step-layers", type=int, default=2)
    p.add_argument("--step-vocab", type=int, default=1024)
    p.add_argument("--head-scale", type=float, default=200.0, help="LM head scale of the random model (confidence)")
    p.add_argument("--json", default="benchmarks/results/fast_decoding.json")
    p.add_argument("--png", default="benchmarks/results/fast_decoding.png")
    p.add_argument("--plot-also", nargs="+", default=[], metavar="JSON",
                   help="earlier runs' --json files whose modes the PNG shows beside this run's")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    results, train_info = [], {}
    if not args.no_accuracy:
        model, tokenizer, train_info = train_or_load(args)
        problems = eval_problems(args.problems, args.shift)
        for mode in modes(args.canvas, args.block, args.tau, args.gamma, args.window):
            if not args.only or mode.name in args.only:
                results.append(run_mode(model, tokenizer, problems, mode, args))
    steps = step_time_rows(args) if args.step_time else []
    print_tables(results, steps)
    record = {
        "command": "benchmarks/fast_decoding.py " + " ".join(os.sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "training": {k: v for k, v in train_info.items() if k != "loss_curve"},
        "loss_curve": train_info.get("loss_curve"),
        "modes": results,
        "step_time": steps,
    }
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    if results:
        earlier = [r for path in args.plot_also for r in json.loads(pathlib.Path(path).read_text())["modes"]]
        plot(earlier + results, pathlib.Path(args.png))
    print(f"wrote {path}{f' and {args.png}' if results else ''}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
