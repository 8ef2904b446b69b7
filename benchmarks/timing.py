"""How every speed benchmark here times its sides, so that a busy machine cannot flatter a result.

- The sides (dlm-jax, PyTorch at 1 thread, PyTorch at all cores, ...) are timed in alternating phases
  (`interleave`), so all of them see the same machine; each side keeps its best phase.
- PyTorch runs at 1 thread and at every core (`torch_sides`); the comparison is against the faster.
- Every phase records the 1-minute load average before and after it and the CPU that OTHER
  processes used while it ran (machine-wide busy time from /proc/stat minus this process's CPU time,
  in cores). The load average includes the benchmark's own threads (it climbs towards their number
  while phases run), so a run is publishable only if the load average was <= 1 when the benchmark
  started and no phase saw other processes use more than 1 core (`LOAD_LIMIT`). Without /proc/stat
  (not Linux) every recorded load average must stay <= 1 instead.

    >>> rec = Recorder()
    >>> times = rec.interleave({"a": lambda: 1.0, "b": lambda: 2.0}, repeats=2)
    >>> times, len(rec.phases)
    ({'a': [1.0, 1.0], 'b': [2.0, 2.0]}, 4)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable

LOAD_LIMIT = 1.0


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def _machine_busy_s() -> float | None:
    """Seconds of CPU time all processes have used since boot (all cores), or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Phase:
    """One timed phase of one side."""

    side: str
    value: float
    wall_s: float
    load_before: float
    load_after: float
    others_cpu: float | None  # cores used by other processes during the phase


class Recorder:
    """Runs and records timed phases; `summary()` says whether the run is publishable."""

    def __init__(self) -> None:
        self.load_at_start = load_average()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.phases: list[Phase] = []

    def measure(self, side: str, fn: Callable[[], float]) -> float:
        """Run `fn` (which returns the phase's own measurement, e.g. seconds per step) and record the phase."""
        load_before, busy0, own0, t0 = load_average(), _machine_busy_s(), time.process_time(), time.perf_counter()
        value = fn()
        wall, own, busy1 = time.perf_counter() - t0, time.process_time() - own0, _machine_busy_s()
        others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - own) / wall)
        self.phases.append(Phase(side, float(value), wall, load_before, load_average(), others))
        return value

    def interleave(self, sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
        """`repeats` rounds of one phase per side, in turn; every side's measurements in order."""
        out: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(repeats):
            for name, fn in sides.items():
                out[name].append(self.measure(name, fn))
        return out

    def summary(self) -> dict:
        """The run's command, date, load record and publishability, for the result JSON."""
        loads = [self.load_at_start] + [v for p in self.phases for v in (p.load_before, p.load_after)]
        others = [p.others_cpu for p in self.phases if p.others_cpu is not None]
        if len(others) == len(self.phases):
            worst_others = max(others, default=0.0)
            ok = self.load_at_start <= LOAD_LIMIT and worst_others <= LOAD_LIMIT
            why = (f"load average at start {self.load_at_start:.2f}, other processes' CPU during phases up to "
                   f"{worst_others:.2f} cores (limit {LOAD_LIMIT})")
        else:
            ok = max(loads) <= LOAD_LIMIT
            why = f"load average up to {max(loads):.2f} (limit {LOAD_LIMIT})"
        return {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "date_utc": self.started.strftime("%Y-%m-%d %H:%M"),
            "cpus": os.cpu_count(),
            "load_at_start": self.load_at_start,
            "load_max": max(loads),
            "publishable": ok,
            "publishable_reason": why,
            "phases": [dataclasses.asdict(p) for p in self.phases],
        }


def torch_sides(run_phase: Callable[[], float], prefix: str = "torch") -> dict[str, Callable[[], float]]:
    """PyTorch sides at 1 thread and at all cores: `{prefix}_1t` and `{prefix}_{n}t`, each setting its thread count."""
    import torch

    def at(n: int) -> Callable[[], float]:
        def phase() -> float:
            torch.set_num_threads(n)
            return run_phase()

        return phase

    counts = sorted({1, os.cpu_count() or 1})
    return {f"{prefix}_{n}t": at(n) for n in counts}


def verdict(summary: dict) -> str:
    """One line to print under a result table."""
    tag = "publishable" if summary["publishable"] else "NOT PUBLISHABLE (machine busy)"
    return f"{tag}: {summary['publishable_reason']}; {summary['date_utc']} UTC; {summary['command']}"


def report(result: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Print the verdict of `result["timing"]` and write `result` as JSON to `path` (parents made)."""
    print(verdict(result["timing"]))
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return out
