"""The data/task settings a model was trained with, kept in its folder so `eval` can default to them."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

FILENAME = "dlm_jax_training.json"


@dataclasses.dataclass(frozen=True)
class TrainingRecord:
    """What `dlm-jax train` recorded beside the exported model (`RUN/model/dlm_jax_training.json`).

    `data`: the experiment's data section (task kind, `task_seed`, `options`, `format`, ...);
    `seq_len`: the training row length (the canvas the model learnt to fill); `objective`; `steps`.
    """

    path: pathlib.Path
    data: dict[str, Any]
    seq_len: int
    objective: str
    steps: int

    def task(self, kind: str) -> dict[str, Any] | None:
        """The data section when the model was trained on the built-in task `kind`, else None."""
        return self.data if self.data.get("kind") == kind else None


def write_training_record(folder: str | pathlib.Path, *, data: dict[str, Any], seq_len: int, objective: str,
                          steps: int) -> pathlib.Path:
    """Write `folder/dlm_jax_training.json`; returns its path."""
    path = pathlib.Path(folder) / FILENAME
    record = {"data": data, "seq_len": seq_len, "objective": objective, "steps": steps}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def read_training_record(folder: str | pathlib.Path) -> TrainingRecord | None:
    """The record in a model folder, or None when the folder has none (e.g. a converted HF model).

    Example:
        >>> pathlib.Path("model").mkdir()
        >>> _ = write_training_record("model", data={"kind": "reverse_curse", "options": {"num_facts": 24}},
        ...                           seq_len=12, objective="mdm", steps=1000)
        >>> record = read_training_record("model")
        >>> record.task("reverse_curse")["options"], record.task("sudoku"), record.seq_len
        ({'num_facts': 24}, None, 12)
        >>> read_training_record(".") is None
        True
    """
    path = pathlib.Path(folder) / FILENAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return TrainingRecord(path, dict(raw["data"]), int(raw["seq_len"]), str(raw["objective"]), int(raw["steps"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid training record ({type(e).__name__}: {e})") from None
