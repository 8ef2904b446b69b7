"""Where metrics go: a JSONL file in the run folder, a console progress bar and (optionally) wandb."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

from dlm_jax.training.wandb_setup import wandb_mode as resolve_wandb_mode

_SHOWN = ("loss", "val_elbo", "tokens_per_s", "lr")


def truncate_metrics(path: str | pathlib.Path, last_step: int) -> None:
    """Drop every record of a metrics.jsonl past `last_step` (the steps a resumed run will log again).

    A run that crashed after its last checkpoint logged steps it never saved; without this a
    rerun would log them a second time. A line cut short by the crash is dropped too.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if step <= last_step:
            kept.append(line + "\n")
    path.write_text("".join(kept))


class MetricsLog:
    """JSONL metrics + tqdm progress (loss, tokens/s, ETA) + wandb (offline unless a key is configured).

    The file is cut back to `start_step` first, so a resumed run never holds a step twice.

    Example:
        >>> log = MetricsLog("runs/x", total_steps=100, tokens_per_step=4096, progress=False)
        >>> log.write({"step": 1, "loss": 3.2})
        >>> log.close()
        >>> [json.loads(line)["loss"] for line in pathlib.Path("runs/x/metrics.jsonl").open()]
        [3.2]
    """

    def __init__(
        self,
        out_dir: str | pathlib.Path,
        *,
        total_steps: int,
        tokens_per_step: int,
        start_step: int = 0,
        progress: bool = True,
        wandb_mode: str = "disabled",
        wandb_project: str = "dlm-jax",
        config: dict[str, Any] | None = None,
    ):
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        truncate_metrics(self.path, start_step)
        self.file = self.path.open("a")
        self.tokens_per_step = tokens_per_step
        self.t0, self.step0 = time.perf_counter(), start_step
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", file=sys.stderr, dynamic_ncols=True)
        self.wandb = None
        if wandb_mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=wandb_project, mode=resolve_wandb_mode(wandb_mode), dir=str(self.out_dir),
                                    config=config or {}, reinit=True)

    def tokens_per_second(self, step: int) -> float:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return (step - self.step0) * self.tokens_per_step / elapsed

    def write(self, record: dict[str, Any]) -> None:
        """Log one record (must carry `step`); missing (None) values are left out, floats rounded for the console."""
        step = int(record["step"])
        record = {"tokens_per_s": round(self.tokens_per_second(step), 1),
                  **{k: v for k, v in record.items() if v is not None}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.n = step
            shown = {k: f"{v:.4g}" for k, v in record.items() if k in _SHOWN and isinstance(v, (int, float))}
            self.bar.set_postfix(shown, refresh=True)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    with pathlib.Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(metrics_path: str | pathlib.Path, png_path: str | pathlib.Path | None = None) -> pathlib.Path | None:
    """Draw the train loss (and validation ELBO/NLL, if any) against step into a PNG beside metrics.jsonl.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). Returns the PNG
    path, or None when the file holds no finite loss yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_path = pathlib.Path(metrics_path)
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    curves = {
        name: [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        for name, key in (("train loss", "loss"), ("validation ELBO / NLL", "val_elbo"))
    }
    if not curves["train loss"]:
        return None
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (name, points), style in zip(curves.items(), ("-", "o-"), strict=True):
        if points:
            ax.plot(*zip(*points, strict=True), style, label=name, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title(metrics_path.parent.name)
    ax.legend()
    fig.tight_layout()
    png_path = pathlib.Path(png_path or metrics_path.with_name("loss.png"))
    fig.savefig(png_path, dpi=100)
    return png_path
