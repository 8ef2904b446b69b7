"""Multi-host start-up: `jax.distributed.initialize` from flags or the environment, and per-process helpers."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

MODES = ("auto", "none", "explicit", "slurm", "tpu")
# The port JAX itself derives for SLURM jobs when none is given: job id mod 4096 in [61440, 65535].
_SLURM_PORT_BASE = 65535 - 2**12 + 1


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """How this process joins the job; `mode == "none"` means a single process (no initialize call).

    `mode == "tpu"` leaves address/count/id to JAX's Cloud TPU detection (GCE metadata);
    the other modes carry every value explicitly, so nothing is guessed twice.
    """

    mode: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    coordinator_port: int | None = None


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Add --distributed, --coordinator-address/--coordinator-port, --num-processes, --process-id."""
    g = parser.add_argument_group("multi-host (every flag also reads DLM_<NAME> from the environment)")
    g.add_argument("--distributed", choices=MODES, default=None, help="how to join a multi-process job (auto)")
    g.add_argument("--coordinator-address", default=None, help="host[:port] of process 0 (explicit mode)")
    g.add_argument("--coordinator-port", type=int, default=None, help="port of the coordinator (open in firewalls)")
    g.add_argument("--num-processes", type=int, default=None, help="total number of processes (explicit mode)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index (explicit mode)")


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def _pick(value: int | None, env: Mapping[str, str], name: str) -> int | None:
    return value if value is not None else _int(env.get(name), name)


def first_slurm_host(nodelist: str) -> str:
    """First hostname of a SLURM node list: 'gpu[003-010,012],cpu1' -> 'gpu003'.

    Example:
        >>> first_slurm_host("node[07-09],login")
        'node07'
    """
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"SLURM node list {nodelist!r} is empty or malformed")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges, maxsplit=1)[0]


def _tasks_on_node(env: Mapping[str, str]) -> int:
    raw = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return 1
    return int(re.match(r"\d+", raw).group(0))


def resolve(
    *,
    mode: str | None = None,
    coordinator_address: str | None = None,
    coordinator_port: int | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedSpec:
    """Decide how to join the job from explicit values, then DLM_* variables, then SLURM / TPU variables.

    Pure (reads only `env`, default `os.environ`), so launchers and tests can check it.

    Example:
        >>> resolve(env={"DLM_COORDINATOR_ADDRESS": "10.0.0.2", "DLM_COORDINATOR_PORT": "8476",
        ...              "DLM_NUM_PROCESSES": "2", "DLM_PROCESS_ID": "1"}).coordinator_address
        '10.0.0.2:8476'
    """
    env = os.environ if env is None else env
    mode = mode or env.get("DLM_DISTRIBUTED") or "auto"
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r} is not one of {MODES}")
    address = coordinator_address or env.get("DLM_COORDINATOR_ADDRESS") or None
    port = _pick(coordinator_port, env, "DLM_COORDINATOR_PORT")
    nproc = _pick(num_processes, env, "DLM_NUM_PROCESSES")
    pid = _pick(process_id, env, "DLM_PROCESS_ID")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"--coordinator-port={port} is outside 1..65535")

    if mode == "auto":
        if address is not None:
            mode = "explicit"
        elif "SLURM_JOB_ID" in env and (_int(env.get("SLURM_NTASKS"), "SLURM_NTASKS") or 1) > 1:
            mode = "slurm"
        elif "," in env.get("TPU_WORKER_HOSTNAMES", ""):
            mode = "tpu"
        else:
            return DistributedSpec("none")
    if mode == "none":
        return DistributedSpec("none")
    if mode == "explicit":
        if address is None or nproc is None or pid is None:
            raise ValueError(
                "explicit multi-host mode needs --coordinator-address, --num-processes and --process-id "
                "(or DLM_COORDINATOR_ADDRESS, DLM_NUM_PROCESSES, DLM_PROCESS_ID)"
            )
        if ":" not in address:
            if port is None:
                raise ValueError(f"--coordinator-address={address!r} has no port: add host:PORT or --coordinator-port")
            address = f"{address}:{port}"
        if nproc < 1 or not 0 <= pid < nproc:
            raise ValueError(f"--process-id={pid} must be in 0..{nproc - 1} (--num-processes={nproc})")
        return DistributedSpec("explicit", address, nproc, pid)
    if mode == "slurm":
        missing = [k for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID") if k not in env]
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if missing or not nodelist:
            raise ValueError(f"--distributed=slurm outside a SLURM step: missing {missing or ['SLURM_STEP_NODELIST']}")
        if port is None:
            port = int(env["SLURM_JOB_ID"]) % 2**12 + _SLURM_PORT_BASE
        host = address.split(":")[0] if address else first_slurm_host(nodelist)
        # One task per node sees all of the node's GPUs; one task per GPU gets the GPU of its local rank.
        local = (int(env["SLURM_LOCALID"]),) if _tasks_on_node(env) > 1 else None
        return DistributedSpec("slurm", f"{host}:{port}", int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]), local)
    return DistributedSpec("tpu", coordinator_port=port)


def initialize(spec: DistributedSpec) -> DistributedSpec:
    """Call `jax.distributed.initialize` for `spec` (nothing for mode "none"). Call before any other JAX use.

    On CPU-only jobs (JAX_PLATFORMS=cpu) cross-process collectives go through gloo.

    Example:
        >>> initialize(resolve(env={}))  # a single process: nothing to join
        DistributedSpec(mode='none', coordinator_address=None, num_processes=None, process_id=None,
                        local_device_ids=None, coordinator_port=None)

        In a multi-process job every process calls `initialize(resolve())` first thing.
    """
    if spec.mode == "none":
        return spec
    import jax

    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec.mode == "tpu":
        if spec.coordinator_port is not None:
            os.environ["JAX_COORDINATOR_PORT"] = str(spec.coordinator_port)
        jax.distributed.initialize()
        return spec
    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes,
        process_id=spec.process_id,
        local_device_ids=list(spec.local_device_ids) if spec.local_device_ids is not None else None,
        cluster_detection_method="deactivate",
    )
    return spec


def initialize_from_args(args: argparse.Namespace) -> DistributedSpec:
    """`initialize(resolve(...))` from the flags `add_distributed_args` added."""
    return initialize(
        resolve(
            mode=getattr(args, "distributed", None),
            coordinator_address=getattr(args, "coordinator_address", None),
            coordinator_port=getattr(args, "coordinator_port", None),
            num_processes=getattr(args, "num_processes", None),
            process_id=getattr(args, "process_id", None),
        )
    )


def is_primary() -> bool:
    """True on the process that writes logs, metrics and non-array files (process 0)."""
    import jax

    return jax.process_index() == 0


def process_batch_rows(sharding: Any, global_batch: int, ndim: int = 2) -> tuple[int, int]:
    """[start, stop) rows of the global batch that this process's devices hold under `sharding`.

    Each process loads exactly these rows and hands them to `shard_batch`. Raises when the
    rows are not one contiguous block (a mesh whose device order interleaves processes).

    Example:
        >>> from jax.sharding import NamedSharding, PartitionSpec
        >>> from dlm_jax.parallel.mesh import MeshConfig, make_mesh
        >>> sharding = NamedSharding(make_mesh(MeshConfig(fsdp=-1)), PartitionSpec("fsdp"))
        >>> process_batch_rows(sharding, 64)  # a single process holds every row
        (0, 64)
    """
    shape = (global_batch,) + (1,) * (ndim - 1)
    rows = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows.update(range(*index[0].indices(global_batch)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError(f"this process's batch rows {sorted(rows)} are not contiguous; reorder the mesh devices")
    return start, stop


def data_shard(sharding: Any, global_batch: int) -> tuple[int, int]:
    """(shard_index, shard_count): the slice of the data this process reads (`data.pipeline.make_dataset(shard=...)`).

    Processes whose devices hold the same rows (batch replicated across them) read the same shard.

    Example:
        >>> from jax.sharding import NamedSharding, PartitionSpec
        >>> from dlm_jax.parallel.mesh import MeshConfig, make_mesh
        >>> sharding = NamedSharding(make_mesh(MeshConfig(fsdp=-1)), PartitionSpec("fsdp"))
        >>> data_shard(sharding, 64)  # a single process reads the one shard
        (0, 1)
    """
    start, stop = process_batch_rows(sharding, global_batch)
    rows = stop - start
    if global_batch % rows:
        raise ValueError(f"global batch {global_batch} does not split evenly into this process's {rows} rows")
    return start // rows, global_batch // rows
