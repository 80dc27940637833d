"""The agent's share of the dispatch path: run requests sent straight to a real
``natsched-agent`` (no master), each answered once the agent won the run's claim,
committed its journal row and started ``/bin/true``.

- run request -> started reply p50/p99 (one request/reply hop plus the claim's KV round
  trip and a spawn; floor: the raw request/reply round trip of the same run);
- runs/s with 32 in flight, and the agent's CPU per run then (user + system time of its
  process over the runs it started, events and journal included), one after the other too.

``bench.master_bench`` measures the master's share with agents that answer at once;
``bench.dispatch_bench`` the whole path. Run: .venv/bin/python -m bench.agentpath_bench
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

import nats
import psutil
from nats.aio.client import Client

from bench.common import Figure, percentile, report, request_reply_floor, server, services
from natsched import subjects
from natsched.buckets import ensure_all
from natsched.events import new_run_id
from natsched.jobspec import parse_job
from natsched.runmessages import RunRequest, decode_run_reply
from natsched.vocab import RunTrigger

AGENT = "ap1"
IN_FLIGHT = 32
SPEC = parse_job(
    {
        "name": "true",
        "group": "bench",
        "mode": "slave",
        "command": ["/bin/true"],
        "targets": {"agents": [AGENT]},
    }
)


def request() -> bytes:
    return RunRequest(run_id=new_run_id(), spec=SPEC, trigger=RunTrigger.MANUAL, master="bench").encode()


async def started(nc: Client, body: bytes) -> None:
    reply = decode_run_reply((await nc.request(subjects.agent_run_subject(AGENT), body, timeout=10)).data)
    if not reply.ok:
        raise RuntimeError(f"run refused: {reply.reason}")


async def wait_ready(nc: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await started(nc, request())
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.3)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def sequential(nc: Client, agent: psutil.Process, count: int) -> tuple[float, float, float]:
    """p50 and p99 (ms) of request -> started reply, one at a time; agent CPU per run (ms)."""
    samples = []
    cpu = cpu_seconds(agent)
    for _ in range(count):
        body = request()
        start = time.perf_counter()
        await started(nc, body)
        samples.append((time.perf_counter() - start) * 1000)
    per_run = (cpu_seconds(agent) - cpu) / count * 1000
    return statistics.median(samples), percentile(samples, 99), per_run


async def in_flight(nc: Client, agent: psutil.Process, seconds: float) -> tuple[float, float]:
    """Runs/s with IN_FLIGHT requests outstanding; agent CPU per run (ms)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await started(nc, request())
            done += 1

    cpu = cpu_seconds(agent)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    rate = done / (time.perf_counter() - start)
    await asyncio.sleep(0.5)  # the last runs' ends and events, paid for by these runs
    return rate, (cpu_seconds(agent) - cpu) / done * 1000


async def measure(url: str, agent: psutil.Process, count: int, seconds: float) -> list[Figure]:
    nc = await nats.connect(url)
    await ensure_all(nc.jetstream())
    await wait_ready(nc)
    for _ in range(100):  # warm: caches, the claims bucket handle, the journal
        await started(nc, request())
    rtt50, rtt99 = await request_reply_floor(nc)
    p50, p99, cpu_one = await sequential(nc, agent, count)
    rate, cpu_many = await in_flight(nc, agent, seconds)
    await nc.close()
    many = f"{IN_FLIGHT} in flight"
    return [
        Figure("run request -> started, agent only p50", p50, "ms", "req/reply p50", rtt50, "-", None),
        Figure("run request -> started, agent only p99", p99, "ms", "req/reply p99", rtt99, "-", None),
        Figure("agent CPU per run, one at a time", cpu_one, "ms", "req/reply p50", rtt50, "-", None),
        Figure(
            f"runs/s, 1 agent, {many}, via run requests", rate, "/s", "1000/rtt p50", 1000 / rtt50, "-", None
        ),
        Figure(f"agent CPU per run, {many}", cpu_many, "ms", "req/reply p50", rtt50, "-", None),
    ]


def main(count: int, seconds: float) -> None:
    with server() as srv, services(srv.url) as running:
        process = running.agent(AGENT)
        figures = asyncio.run(measure(srv.url, psutil.Process(process.pid), count, seconds))
    report("natsched agent path", figures, "agentpath")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.count, args.seconds)
