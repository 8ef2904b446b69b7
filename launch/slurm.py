"""SLURM launcher for multi-node GPU jobs: writes an sbatch script whose `srun` starts one JAX process
per node (each sees the node's GPUs) or per GPU, and submits it.

Every process resolves the coordinator (first node of the job), its id and the process count from
SLURM's variables (`DLM_DISTRIBUTED=slurm`, see dlm_jax/parallel/distributed.py).

Example:
  python launch/slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 24:00:00 \\
      -- dlm-jax train --config configs/experiments/dream_sft.yaml
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

from common import exports, quote, require_command, split_command


def script(args: argparse.Namespace, command: list[str]) -> str:
    """The sbatch script text."""
    tasks = 1 if args.tasks == "per-node" else args.gpus_per_node
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={tasks}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={args.log_dir}/%x-%j.out",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    env = {"DLM_DISTRIBUTED": "slurm"}
    if args.port:
        env["DLM_COORDINATOR_PORT"] = str(args.port)
    env.update(dict(kv.split("=", 1) for kv in args.env))
    lines += [
        "set -euo pipefail",
        f"cd {args.repo_dir}",
        f"source {args.venv}/bin/activate",
        exports(env),
        f"srun --kill-on-bad-exit=1 --ntasks-per-node={tasks} {quote(command)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--tasks", choices=("per-node", "per-gpu"), default="per-node", help="JAX processes per node")
    p.add_argument("--cpus-per-task", type=int, default=16)
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--job-name", default="dlm-jax")
    p.add_argument("--repo-dir", default=".", help="checkout on the shared filesystem")
    p.add_argument("--venv", default=".venv", help="virtual environment with jax[cuda12] and dlm-jax")
    p.add_argument("--log-dir", default="logs")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default: JAX's job-id derived port)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeatable)")
    p.add_argument("--script-out", default="dlm_jax_job.sbatch", help="where the sbatch script is written")
    p.add_argument("--dry-run", action="store_true", help="print the script and the sbatch command, submit nothing")
    args = p.parse_args(own)
    require_command(p, command)
    for name in ("nodes", "gpus_per_node", "cpus_per_task"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    bad = [kv for kv in args.env if "=" not in kv]
    if bad:
        p.error(f"--env {bad[0]!r}: expected KEY=VALUE")
    text = script(args, command)
    submit = ["sbatch", args.script_out]
    if args.dry_run:
        print(f"# {args.script_out}")
        print(text, end="")
        print(quote(submit))
        return 0
    pathlib.Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.script_out).write_text(text)
    return subprocess.run(submit).returncode


if __name__ == "__main__":
    sys.exit(main())
