"""`dlm-jax train` end to end on a tiny YAML, its bad-input errors, and the demo's text sparkline."""

import json

import numpy as np
import pytest

from dlm_jax.cli import main
from dlm_jax.commands.demo import sparkline

TINY = ["model.hidden_size=16", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=32",
        "train.max_steps=2", "train.batch_size=8", "train.log_every=1", "train.eval_mc_samples=1",
        "checkpoint.async_save=false", "logging.progress=false"]


def _train(tmp_path, *extra):
    argv = ["train", "--config", "configs/experiments/tiny_mdm.yaml", "--out", str(tmp_path / "run")]
    for s in TINY + list(extra):
        argv += ["--set", s]
    return main(argv)


@pytest.mark.slow
def test_train_command_writes_metrics_checkpoint_and_model(tmp_path, capsys):
    assert _train(tmp_path) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert "val_elbo" in records[-1] and np.isfinite(records[-1]["val_elbo"])
    assert (run / "checkpoints" / "2").is_dir()
    from dlm_jax.api import DiffusionLM

    model = DiffusionLM.from_pretrained(run / "model")
    assert model.config.hidden_size == 16 and model.config.mask_token_id == 3
    assert "done: step 2" in capsys.readouterr().out


def test_train_command_bad_inputs_are_one_clear_error(tmp_path, capsys):
    assert _train(tmp_path, "train.learning_rate=1") == 2
    assert "--set train.learning_rate: unknown key" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _train(tmp_path, "data.kind=jsonl", f"data.path={tmp_path}/missing.jsonl") == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_sparkline_is_monotone_for_a_falling_curve():
    line = sparkline([5.0, 4.0, 3.0, 2.0, 1.0], width=5)
    assert line == "█▆▄▂▁"
    assert sparkline([]) == ""
