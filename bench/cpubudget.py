"""Where the CPU of a dispatched run goes, and what rate the machine's cores allow.

A dispatched run costs CPU in every process it crosses (the load client, nats-server, the
master, the agent) and in the job's own process (/bin/true: exec, dynamic loading, exit).
On a machine with C cores, R runs/s cannot exceed C / (CPU per run), whatever the latency
of any one step. So the dispatch bench prints the CPU of each process per run, measured
around its runs/s figure, beside the floor that no scheduler avoids: the CPU of spawning,
exiting and reaping one /bin/true (parent and child), measured here in the same run.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import psutil

from bench.common import Figure


def spawn_cpu_floor(count: int = 500) -> float:
    """CPU ms of one /bin/true spawned as the agent spawns a job, then reaped: this
    process's share (posix_spawn, waitpid) plus the child's (exec, loading, exit)."""
    env = dict(os.environ)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.devnull, "rb") as devnull:
        for _ in range(count):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            actions = [
                (os.POSIX_SPAWN_DUP2, devnull.fileno(), 0),
                (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_DUP2, write_end, 2),
            ]
            pid = os.posix_spawn("/bin/true", ["/bin/true"], env, file_actions=actions, setsid=True)
            os.close(write_end)
            os.waitpid(pid, 0)
            os.close(read_end)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = _cpu(self_after) - _cpu(self_before) + _cpu(children_after) - _cpu(children_before)
    return used / count * 1000


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class _Sample:
    own: float  # seconds of CPU of the process itself
    children: float  # seconds of CPU of its reaped children (an agent's jobs)


def _sample(process: psutil.Process) -> _Sample:
    times = process.cpu_times()
    return _Sample(times.user + times.system, times.children_user + times.children_system)


class CpuMeter:
    """CPU of named processes (and of the jobs they reaped) between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._before: dict[str, _Sample] = {}
        self.used: dict[str, float] = {}  # name -> seconds; "jobs" for all reaped children
        self.seconds = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._before = {name: _sample(process) for name, process in self._processes.items()}
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._started
        self.used = {"jobs": 0.0}
        for name, process in self._processes.items():
            after, before = _sample(process), self._before[name]
            self.used[name] = after.own - before.own
            self.used["jobs"] += after.children - before.children


def budget_figures(meter: CpuMeter, runs: int, spawn_cpu_ms: float, target_rate: float) -> list[Figure]:
    """CPU per run in all processes against the spawn's own CPU, each process's share, and the
    rate the cores allow at that cost (target: ``target_rate``)."""
    cores = psutil.cpu_count() or 1
    per_run = {name: used / runs * 1000 for name, used in meter.used.items()}
    total = sum(per_run.values())
    budget = cores * 1000 / target_rate
    floor = "spawn+reap CPU ms"
    figures = [
        Figure(
            "CPU per dispatched run, all processes",
            total,
            "ms",
            floor,
            spawn_cpu_ms,
            f"<= {budget:.2f} ({cores} cores / {target_rate:g})",
            total <= budget,
        )
    ]
    figures += [
        Figure(f"  CPU per run: {name}", value, "ms", floor, spawn_cpu_ms, "-", None)
        for name, value in sorted(per_run.items(), key=lambda item: -item[1])
    ]
    figures.append(
        Figure(
            "runs/s the cores allow at that CPU per run",
            cores * 1000 / total,
            "/s",
            "cores/spawn CPU",
            cores * 1000 / spawn_cpu_ms,
            f">= {target_rate:g}/s",
            cores * 1000 / total >= target_rate,
        )
    )
    busy = sum(meter.used.values()) / meter.seconds
    figures.append(Figure("cores busy during runs/s, all processes", busy, "", "cores", cores, "-", None))
    return figures
