"""Results in lm-eval's JSON layout, with the full model/estimator/sampler settings and provenance."""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from dlm_jax.output_dir import current_umask


def git_commit() -> str | None:
    """The commit of the dlm_jax checkout in use (None outside a git checkout)."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


STDERR_REASON = (
    "standard error undefined: fewer than 2 independent samples "
    "(documents, or Monte-Carlo rounds = mc_num / mc_batch_size)"
)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n), as lm-eval's `mean_stderr`); NaN where undefined."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else math.nan
    return float(arr.mean()), se


def provenance() -> dict[str, Any]:
    """Versions and the commit behind a result."""
    import jax

    import dlm_jax

    return {
        "dlm_jax_version": dlm_jax.__version__,
        "git_hash": git_commit(),
        "jax_version": jax.__version__,
        "python_version": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "date": time.time(),
    }


def _null_reason(key: str, value: float) -> str:
    if math.isinf(value):
        return "overflow: the value is infinite"
    return STDERR_REASON if "stderr" in key else "not computable (the value is NaN)"


def task_entry(name: str, metrics: dict[str, float], stderrs: dict[str, float]) -> dict[str, Any]:
    """One `results[task]` block: `"metric,none"` and `"metric_stderr,none"` keys as lm-eval writes them.

    A value that is not a finite number is written as null, with its reason under
    `null_reasons[key]` (results JSON is strict JSON).
    """
    entry: dict[str, Any] = {"alias": name}
    reasons: dict[str, str] = {}
    for key, value in metrics.items():
        entry[f"{key},none"] = value
        entry[f"{key}_stderr,none"] = stderrs.get(key, "N/A")
    for key, value in list(entry.items()):
        if isinstance(value, float) and not math.isfinite(value):
            entry[key] = None
            reasons[key] = _null_reason(key, value)
    if reasons:
        entry["null_reasons"] = reasons
    return entry


def strict_json(value: Any) -> Any:
    """`value` with numpy scalars as Python numbers and every NaN/inf as null; a dict holding such a
    value gains `null_reasons` {key: reason} (JSON has no NaN, and `json.loads` elsewhere may reject it).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {key: strict_json(item) for key, item in value.items()}
        reasons = {
            key: _null_reason(str(key), float(item))
            for key, item in value.items()
            if isinstance(item, (float, np.floating)) and not math.isfinite(item)
        }
        if reasons:
            out["null_reasons"] = {**out.get("null_reasons", {}), **reasons}
        return out
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    return value


def write_json(path: str | pathlib.Path, payload: dict[str, Any], *, overwrite: bool = False) -> pathlib.Path:
    """Write strict JSON (see `strict_json`) atomically (temp file + rename): the file is complete or absent.

    An existing file is replaced only with `overwrite=True` (`--overwrite` on the CLI).
    """
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    text = json.dumps(strict_json(payload), indent=2, default=str, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def log_to_wandb(
    results: dict[str, Any], project: str, run_name: str | None = None, out_dir: str | pathlib.Path | None = None
) -> None:
    """Log every task metric (flattened `task/metric`) and the config to a wandb run.

    Online only with an API key; otherwise offline (one note on stderr; `wandb sync` uploads it
    later), or as `$WANDB_MODE` says. The run folder goes under `out_dir` (default: the working directory).
    """
    import wandb

    from dlm_jax.training.wandb_setup import wandb_mode

    run = wandb.init(
        project=project,
        name=run_name,
        config=strict_json(results.get("config", {})),
        job_type="eval",
        mode=wandb_mode(),
        dir=str(out_dir) if out_dir is not None else None,
    )
    flat = {
        f"{task}/{key.split(',')[0]}": value
        for task, metrics in results["results"].items()
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not key.endswith("_stderr,none")
    }
    run.log(flat)
    run.finish()
