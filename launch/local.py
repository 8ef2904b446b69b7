"""Local launcher: N JAX processes on this machine joined through a coordinator on 127.0.0.1.

Example (2 processes x 4 virtual CPU devices = one 8-device mesh):
  python launch/local.py --num-processes 2 --cpu-devices 4 -- dlm-jax train --config configs/experiments/tiny_mdm.yaml
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import exports, quote, require_command, split_command


def build(args: argparse.Namespace) -> list[dict[str, str]]:
    """The extra environment of each process (process id order)."""
    envs = []
    for pid in range(args.num_processes):
        env = {
            "DLM_DISTRIBUTED": "explicit",
            "DLM_COORDINATOR_ADDRESS": args.coordinator_address,
            "DLM_COORDINATOR_PORT": str(args.port),
            "DLM_NUM_PROCESSES": str(args.num_processes),
            "DLM_PROCESS_ID": str(pid),
        }
        if args.cpu_devices:
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"
        if args.gpus_per_process:
            first = pid * args.gpus_per_process
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(args.gpus_per_process))
        envs.append(env)
    return envs


def main(argv: list[str] | None = None) -> int:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-processes", type=int, default=1, help="processes to start (default 1)")
    p.add_argument("--port", type=int, default=8476, help="coordinator port on this machine")
    p.add_argument("--coordinator-address", default="127.0.0.1")
    p.add_argument("--cpu-devices", type=int, default=0, help="run on CPU with this many virtual devices per process")
    p.add_argument("--gpus-per-process", type=int, default=0, help="give each process its own GPUs (CUDA)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    args = p.parse_args(own)
    require_command(p, command)
    if args.num_processes < 1:
        p.error(f"--num-processes={args.num_processes} must be >= 1")
    if not 0 < args.port < 65536:
        p.error(f"--port={args.port} is outside 1..65535")
    envs = build(args)
    if args.dry_run:
        for env in envs:
            print(f"({exports(env)} && {quote(command)}) &")
        print("wait")
        return 0
    procs = [subprocess.Popen(command, env={**os.environ, **env}) for env in envs]
    return wait_all(procs)


def wait_all(procs: list[subprocess.Popen]) -> int:
    """Wait for every process; if one fails, stop the others (they would hang in collectives)."""
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                proc.wait()
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
