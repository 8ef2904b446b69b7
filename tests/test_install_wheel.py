"""Installable outside the repo: presets and experiment configs ship in the wheel and are found from any directory."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from dlm_jax import presets
from dlm_jax.cli import main
from dlm_jax.training.config import load_experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "dlm_jax", "conversion", "configs")


def test_configs_resolve_by_repo_path_or_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = presets.shipped("experiments", "tiny_mdm")
    assert shipped is not None and shipped.read_text() == (REPO / "configs/experiments/tiny_mdm.yaml").read_text()
    for spec in ("configs/experiments/tiny_mdm.yaml", "experiments/tiny_mdm.yaml", "tiny_mdm.yaml", "tiny_mdm"):
        assert presets.find_config("experiments", spec) == shipped, spec
    assert load_experiment("tiny_mdm") == load_experiment(str(REPO / "configs/experiments/tiny_mdm.yaml"))
    # A missing path of the user's own, or one of another kind, is never swapped for a shipped config.
    for spec in ("runs/tiny_mdm.yaml", str(tmp_path / "tiny_mdm.yaml"), "configs/models/tiny_mdm.yaml", "../tiny_mdm"):
        assert presets.find_config("experiments", spec) is None, spec
    # A file that exists wins over the shipped config of the same name.
    local = tmp_path / "configs" / "experiments" / "tiny_mdm.yaml"
    local.parent.mkdir(parents=True)
    local.write_text(shipped.read_text().replace("max_steps: 1000", "max_steps: 7"))
    assert load_experiment("configs/experiments/tiny_mdm.yaml").train.max_steps == 7
    assert "fsdp" in presets.available("meshes") and presets.find_config("meshes", "fsdp").parent.name == "meshes"
    assert presets.shipped("models", "../experiments/tiny_mdm") is None


def test_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "tiny_mdn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "dlm-jax train: error: --config tiny_mdn: no such file, and not a shipped experiment config "
        f"(shipped: {', '.join(presets.available('experiments'))})"
    )


def _run(argv: list, cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_plan_and_train_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to setup.py
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", src],
         tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("dlm_jax-*.whl")
    shipped = {f"dlm_jax/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped <= set(zipfile.ZipFile(wheel).namelist())

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    _run([*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], tmp_path, env)
    # The dependencies come from the test environment's site-packages as plain sys.path entries: the .pth
    # files there (among them the editable install's hook that maps dlm_jax to the checkout) do not run.
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (pathlib.Path(site.stdout.strip()) / "_test_deps.pth").write_text("\n".join(deps) + "\n")

    work = tmp_path / "work"  # no configs/ here and the checkout is not on the path
    work.mkdir()
    probe = "import dlm_jax, dlm_jax.presets as p; print(dlm_jax.__file__); print(p.config_root())"
    where = _run([python, "-c", probe], work, env).stdout.split()
    assert all(pathlib.Path(w).is_relative_to(venv) for w in where), where

    dlm_jax = venv / "bin" / "dlm-jax"
    plan = _run([dlm_jax, "plan", "--model", "smdm_6m", "--seq-len", "64", "--batch", "4", "--mesh", "fsdp=2",
                 "--json"], work, env)
    report = json.loads(plan.stdout)
    assert report["model"] == "smdm_6m" and report["devices"] == 2 and report["per_device_bytes"]["params"] > 0

    train = _run([dlm_jax, "train", "--config", "configs/experiments/tiny_mdm.yaml", "--set", "train.max_steps=2",
                  "--set", "train.batch_size=8", "--set", "logging.progress=false", "--out", "run"], work, env)
    assert "131,392 non-embedding params" in train.stdout and "done: step 2" in train.stdout
    assert [json.loads(line)["step"] for line in (work / "run/metrics.jsonl").read_text().splitlines()][-1] == 2
    assert (work / "run/model/dlm_jax_config.json").is_file()
