"""Every YAML under configs/experiments/ trains a few steps with its own batch size and validation settings.

Only steps and sequence lengths are overridden (`--set`). Weights and data that cannot exist offline
are tiny stand-ins under the names the YAML uses, in a working folder that is the run's cwd:
a tiny Dream HF folder with a chat-template tokenizer, a tiny GPT-2 converted with
`dlm-jax convert --to dlm_jax`, a LLaMA-layout tokenizer folder and JSONL files.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
from collections.abc import Callable

import pytest
import readme_standins as standins
import yaml
from cli_checks import assert_one_line_error, run_cli

from dlm_jax.api import DiffusionLM
from dlm_jax.models.config import ModelConfig
from dlm_jax.training.init_model import merge_init_config
from dlm_jax.training.metrics_log import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiments"


def _diffugpt_adapt(work: pathlib.Path, request: pytest.FixtureRequest) -> None:
    shutil.copytree(request.getfixturevalue("gpt2_converted"), work / "gpt2_jax")
    standins.pretraining_data(work / "data" / "train.jsonl")


@dataclasses.dataclass(frozen=True)
class Case:
    """How one shipped config runs here: `--set` overrides (steps/sizes only) and what to check."""

    sets: tuple[str, ...]
    prepare: Callable[[pathlib.Path, pytest.FixtureRequest], None] | None = None
    validates: bool = True  # the config has validation data: the last record carries val_elbo
    loss_falls: bool = False  # long enough (at its own lr/warmup) for the loss to fall clearly
    hidden_size: int | None = None  # the stand-in checkpoint's size, which init_from must keep


CASES = {
    # 110 steps: past the periodic validation and checkpoint at step 100 (eval_every/every: 100).
    "tiny_ar": Case(("train.max_steps=110",), loss_falls=True),
}
# Shipped configs trained elsewhere: as shipped by the chain test (train -> generate -> eval), with their
# own batch sizes on the README's stand-ins by tests/test_readme_commands.py, and dream_sft / diffugpt_adapt by
# tests/test_objectives_end_to_end.py (init_from keeping the checkpoint's shapes is checked below and there).
COVERED_ELSEWHERE = {"tiny_mdm", "sudoku_sft", "dream_sft", "diffugpt_adapt", "smdm_scaling"}


@pytest.fixture(scope="module")
def gpt2_converted(tmp_path_factory) -> pathlib.Path:
    """The README's GPT-2 step on a tiny GPT-2: `dlm-jax convert --src gpt2 --dst gpt2_jax --to dlm_jax`."""
    work = tmp_path_factory.mktemp("gpt2")
    standins.gpt2(work / "gpt2")
    out = work / "gpt2_jax"
    from dlm_jax.cli import main

    assert main(["convert", "--src", str(work / "gpt2"), "--dst", str(out), "--to", "dlm_jax"]) == 0
    return out


def test_every_shipped_experiment_config_has_a_case():
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")) == sorted([*CASES, *COVERED_ELSEWHERE])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_shipped_experiment_config_trains(name, tmp_path, monkeypatch, capsys, request):
    case, config = CASES[name], EXPERIMENTS / f"{name}.yaml"
    shipped = yaml.safe_load(config.read_text())
    monkeypatch.chdir(tmp_path)
    if case.prepare is not None:
        case.prepare(tmp_path, request)
    argv = ["train", "--config", str(config)]
    for s in case.sets:
        argv += ["--set", s]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, err[-3000:]
    steps = int(next(s for s in case.sets if s.startswith("train.max_steps=")).split("=")[1])
    seq = next((s.split("=")[1] for s in case.sets if s.startswith("train.seq_len=")), shipped["train"]["seq_len"])
    assert f"{steps} steps x {shipped['train']['batch_size']} x {seq} tokens" in out  # the config's own batch
    assert f"done: step {steps}, loss " in out
    run = tmp_path / shipped["logging"]["out_dir"]
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["step"] for r in records] == sorted({r["step"] for r in records}) and records[-1]["step"] == steps
    assert all(math.isfinite(v) for v in losses)
    if case.validates:
        vals = [r["val_elbo"] for r in records if "val_elbo" in r]
        assert vals and all(math.isfinite(v) and v > 0 for v in vals)
        assert "val_elbo" in records[-1]
        every = shipped["train"].get("eval_every", 0)
        assert [r["step"] for r in records if "val_elbo" in r] == [s for s in (every, steps) if 0 < s <= steps]
    else:
        assert not any("val_elbo" in r for r in records)
    if case.loss_falls:
        assert losses[-1] < 0.6 * losses[0], losses
    assert (run / "loss.png").is_file()
    model = DiffusionLM.from_pretrained(run / "model")
    if case.hidden_size is not None:
        assert model.config.hidden_size == case.hidden_size  # the checkpoint's shape, not the preset's


@pytest.mark.slow
def test_init_from_conflict_is_one_error_before_anything_is_written(tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    _diffugpt_adapt(tmp_path, request)
    argv = ["train", "--config", str(EXPERIMENTS / "diffugpt_adapt.yaml"), "--set", "model.hidden_size=64"]
    assert_one_line_error(
        argv, capsys, absent=[tmp_path / "runs"],
        contains="checkpoint.init_from=gpt2_jax: the checkpoint has hidden_size=32 but model.hidden_size=64 is set",
    )


def test_init_from_keeps_the_checkpoint_shapes_and_ids_and_the_experiment_execution_settings():
    preset = ModelConfig.from_preset("diffugpt_s", compute_dtype="bfloat16", remat=True)
    ckpt = ModelConfig(family="gpt2", vocab_size=50257, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=128, position_kind="learned", max_position_embeddings=64,
                       mlp_kind="gelu", norm_kind="layernorm", logit_shift=True, mask_token_id=None,
                       eos_token_id=254, bos_token_id=254)
    merged = merge_init_config(ckpt, preset, explicit=(), source="gpt2_jax")
    assert (merged.hidden_size, merged.num_layers, merged.max_position_embeddings) == (32, 2, 64)
    assert merged.eos_token_id == 254  # the checkpoint's id, not the preset's 50256
    assert merged.mask_token_id == 50256  # the checkpoint has none: the preset fills it
    assert (merged.compute_dtype, merged.remat) == ("bfloat16", True)
    assert merge_init_config(ckpt, preset.replace(mask_token_id=255), ("mask_token_id",), "x").mask_token_id == 255
    with pytest.raises(ValueError, match="has max_position_embeddings=64 but model.max_position_embeddings=1024"):
        merge_init_config(ckpt, preset, ("max_position_embeddings",), "gpt2_jax")  # learned positions: a shape
