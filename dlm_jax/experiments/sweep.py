"""A tiny SMDM-style scaling sweep: (model size x FLOPs budget) for MDM and AR, power-law fits, table and plot."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from dlm_jax.data.tasks import arithmetic_records
from dlm_jax.training.config import experiment_from_dict
from dlm_jax.training.scaling import fit_power_law
from dlm_jax.training.trainer import Trainer

DEFAULT_SIZES = {
    "xs": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
    "s": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 256},
}
DEFAULT_FLOPS = (2e10, 6e10, 2e11)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One finished run of the grid."""

    objective: str
    size: str
    non_embedding_params: int
    flops: float
    steps: int
    val_loss: float


def write_corpus(folder: pathlib.Path, num_train: int, num_val: int, seed: int) -> tuple[pathlib.Path, pathlib.Path]:
    """Arithmetic lines ('23+45=68') as packed-pretraining JSONL (train and a disjoint-seed validation file)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, num, s in (("train", num_train, seed), ("val", num_val, seed + 1)):
        path = folder / f"{name}.jsonl"
        lines = [json.dumps({"text": r["input"] + r["output"]}) for r in arithmetic_records(num, seed=s)]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def run_sweep(
    out_dir: str | pathlib.Path,
    *,
    sizes: dict[str, dict[str, int]] | None = None,
    flops: tuple[float, ...] = DEFAULT_FLOPS,
    objectives: tuple[str, ...] = ("mdm", "ar"),
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train every (objective, size, FLOPs) point; max_steps from C = 6 N D, SMDM's optimiser shape.

    The peak lr is raised from SMDM's 2e-4 (tuned for 10^7-10^9-parameter models) to `lr`
    for these 10^4-10^5-parameter models; decay to lr/10, wd 0.1, betas (0.9, 0.95), clip 1.0.
    Returns the points and, per objective, a power law fitted to the best loss at each budget.
    """
    out_dir = pathlib.Path(out_dir)
    sizes = sizes or DEFAULT_SIZES
    train_path, val_path = write_corpus(out_dir / "data", 20_000, 1_000, seed)
    points: list[SweepPoint] = []
    for objective in objectives:
        for size, shape in sizes.items():
            for budget in flops:
                exp = experiment_from_dict({
                    "model": {"family": "smdm", "vocab_size": 8, "max_position_embeddings": seq_len, **shape},
                    "train": {"objective": objective, "flops": budget, "batch_size": batch_size, "seq_len": seq_len,
                              "lr": lr, "min_lr": lr / 10, "weight_decay": 0.1, "b1": 0.9, "b2": 0.95, "clip": 1.0,
                              "log_every": 25, "eval_batches": 4, "eval_mc_samples": 4, "seed": seed},
                    "data": {"kind": "jsonl", "path": str(train_path), "val_path": str(val_path), "pack": True},
                    "checkpoint": {"every": 0, "resume": False, "export": False},
                    "logging": {"out_dir": str(out_dir / f"{objective}_{size}_{budget:.0e}"), "progress": progress},
                })
                trainer = Trainer(exp)
                result = trainer.run()
                trainer.close()
                points.append(SweepPoint(objective, size, trainer.model_config.non_embedding_params(), budget,
                                         trainer.train_config.max_steps, float(result.final_val)))
    fits = {}
    for objective in objectives:
        best = {c: min(p.val_loss for p in points if p.objective == objective and p.flops == c) for c in flops}
        if len(best) >= 2:
            fit = fit_power_law(list(best), list(best.values()))
            fits[objective] = {"a": fit.a, "b": fit.b, "frontier": best}
    summary = {"points": [dataclasses.asdict(p) for p in points], "fits": fits}
    (out_dir / "sweep.json").write_text(json.dumps(summary, indent=1))
    plot(points, fits, out_dir / "sweep.png")
    return summary


def plot(points: list[SweepPoint], fits: dict[str, Any], path: pathlib.Path) -> None:
    """Final validation loss (MDM: ELBO bound; AR: NLL, per token) vs FLOPs, log-log, with fitted power laws."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))  # the Agg canvas directly: no pyplot state, no global backend switch
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = {"mdm": "tab:blue", "ar": "tab:orange"}
    markers = ["o", "s", "^", "D"]
    sizes = sorted({p.size for p in points}, key=lambda s: min(q.non_embedding_params for q in points if q.size == s))
    for p in points:
        ax.scatter(p.flops, p.val_loss, color=colors.get(p.objective, "k"), marker=markers[sizes.index(p.size) % 4])
    for objective, fit in fits.items():
        c = np.geomspace(min(p.flops for p in points), max(p.flops for p in points), 50)
        ax.plot(c, fit["a"] * c ** fit["b"], color=colors.get(objective, "k"),
                label=f"{objective.upper()}: L = {fit['a']:.3g} C^{fit['b']:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C = 6 N D")
    ax.set_ylabel("final validation loss (nats/token)")
    legend = ", ".join(f"{markers[i % 4]}={s}" for i, s in enumerate(sizes))
    ax.set_title(f"tiny scaling sweep (markers: {legend})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
