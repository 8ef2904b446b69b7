"""Launchers print exactly the commands they would run (TPU VM gcloud, SLURM sbatch script, local processes)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CMD = ["--", "dlm-jax", "train", "--config", "configs/experiments/dream_sft.yaml", "--set", "train.lr=1e-5"]


def launch(script, *argv):
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch" / script), *argv], capture_output=True, text=True, timeout=60
    )
    return out.returncode, out.stdout, out.stderr


def test_tpu_vm_dry_run():
    code, out, _ = launch(
        "tpu_vm.py", "--tpu", "pod", "--zone", "us-east5-a", "--project", "proj", "--setup",
        "--repo-url", "https://example.org/dlm-jax.git", "--port", "8476", "--dry-run", *CMD,
    )  # fmt: skip
    assert code == 0
    ssh = "gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --worker=all --project=proj"
    assert out.splitlines() == [
        f"{ssh} '--command=(test -d ~/dlm-jax || git clone https://example.org/dlm-jax.git ~/dlm-jax) && "
        "cd ~/dlm-jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
        ".venv/bin/pip install -q -e . '\"'\"'jax[tpu]'\"'\"''",
        f"{ssh} '--command=cd ~/dlm-jax && source .venv/bin/activate && "
        "export DLM_COORDINATOR_PORT=8476 DLM_DISTRIBUTED=tpu && "
        "dlm-jax train --config configs/experiments/dream_sft.yaml --set train.lr=1e-5'",
    ]


def test_slurm_dry_run_per_gpu():
    code, out, _ = launch(
        "slurm.py", "--nodes", "2", "--gpus-per-node", "8", "--tasks", "per-gpu", "--partition", "h100",
        "--time", "01:00:00", "--port", "29500", "--script-out", "job.sbatch", "--dry-run", *CMD,
    )  # fmt: skip
    assert code == 0
    assert out.splitlines() == [
        "# job.sbatch",
        "#!/bin/bash",
        "#SBATCH --job-name=dlm-jax",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --time=01:00:00",
        "#SBATCH --output=logs/%x-%j.out",
        "#SBATCH --partition=h100",
        "set -euo pipefail",
        "cd .",
        "source .venv/bin/activate",
        "export DLM_COORDINATOR_PORT=29500 DLM_DISTRIBUTED=slurm",
        "srun --kill-on-bad-exit=1 --ntasks-per-node=8 dlm-jax train --config configs/experiments/dream_sft.yaml "
        "--set train.lr=1e-5",
        "sbatch job.sbatch",
    ]


def test_slurm_per_node_one_task():
    code, out, _ = launch("slurm.py", "--nodes", "4", "--dry-run", *CMD)
    assert code == 0
    assert "#SBATCH --ntasks-per-node=1" in out.splitlines()
    assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1 dlm-jax train" in out


def test_local_dry_run():
    code, out, _ = launch(
        "local.py", "--num-processes", "2", "--cpu-devices", "4", "--port", "12345", "--dry-run", *CMD
    )
    assert code == 0
    env = "DLM_COORDINATOR_ADDRESS=127.0.0.1 DLM_COORDINATOR_PORT=12345 DLM_DISTRIBUTED=explicit DLM_NUM_PROCESSES=2"
    tail = "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4"
    run = "dlm-jax train --config configs/experiments/dream_sft.yaml --set train.lr=1e-5"
    assert out.splitlines() == [
        f"(export {env} DLM_PROCESS_ID=0 {tail} && {run}) &",
        f"(export {env} DLM_PROCESS_ID=1 {tail} && {run}) &",
        "wait",
    ]


def test_launchers_reject_bad_input():
    assert launch("local.py", "--dry-run")[0] == 2  # no command after --
    code, _, err = launch("tpu_vm.py", "--tpu", "x", "--zone", "z", "--setup", "--dry-run", *CMD)
    assert code == 2 and "--setup needs --repo-url" in err
    code, _, err = launch("slurm.py", "--nodes", "0", "--dry-run", *CMD)
    assert code == 2 and "--nodes=0 must be >= 1" in err
