"""TPU VM launcher: run the same command on every host of a TPU pod slice with `gcloud ... ssh --worker=all`.

JAX's Cloud TPU detection finds the coordinator and process ids on each host; the launcher only
sets `DLM_DISTRIBUTED=tpu` (and a coordinator port, if given) and activates the environment.

Example:
  python launch/tpu_vm.py --tpu my-v5p-128 --zone us-east5-a --setup --repo-url https://github.com/YOU/dlm-jax.git \\
      -- dlm-jax train --config configs/experiments/dream_sft.yaml
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from common import exports, quote, require_command, shell_join, split_command


def gcloud_ssh(args: argparse.Namespace, remote: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}", "--worker=all"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return [*cmd, f"--command={remote}"]


def build(args: argparse.Namespace, command: list[str]) -> list[list[str]]:
    """The gcloud invocations, in order: optional setup on every worker, then the run."""
    steps = []
    if args.setup:
        setup = shell_join(
            [
                f"(test -d {args.repo_dir} || git clone {args.repo_url} {args.repo_dir})",
                f"cd {args.repo_dir}",
                "python3 -m venv .venv",
                ".venv/bin/pip install -q -U pip",
                ".venv/bin/pip install -q -e . 'jax[tpu]'",
            ]
        )
        steps.append(gcloud_ssh(args, setup))
    env = {"DLM_DISTRIBUTED": "tpu"}
    if args.port:
        env["DLM_COORDINATOR_PORT"] = str(args.port)
    env.update(dict(kv.split("=", 1) for kv in args.env))
    run = shell_join([f"cd {args.repo_dir}", "source .venv/bin/activate", exports(env), quote(command)])
    steps.append(gcloud_ssh(args, run))
    return steps


def main(argv: list[str] | None = None) -> int:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tpu", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True, help="e.g. us-central2-b")
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    p.add_argument("--repo-dir", default="~/dlm-jax", help="checkout on every worker")
    p.add_argument("--repo-url", default=None, help="git URL cloned by --setup where --repo-dir is missing")
    p.add_argument("--setup", action="store_true", help="first clone + install (venv, jax[tpu]) on every worker")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default: JAX's)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    args = p.parse_args(own)
    require_command(p, command)
    if args.setup and not args.repo_url:
        p.error("--setup needs --repo-url (the git URL of your dlm-jax checkout)")
    bad = [kv for kv in args.env if "=" not in kv]
    if bad:
        p.error(f"--env {bad[0]!r}: expected KEY=VALUE")
    steps = build(args, command)
    if args.dry_run:
        for step in steps:
            print(quote(step))
        return 0
    for step in steps:
        code = subprocess.run(step).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
