"""The master's share of the dispatch path: a real ``natsched master`` with agents that answer
at once (no claim, no spawn), so every figure is the master's own work plus the round trips.

- trigger -> reply p50/p99 (two request/reply hops: client -> master -> agent; floor 2 x rtt);
- trigger -> reply runs/s with 64 in flight, and the master's CPU per dispatch then
  (user + system time of its process over the runs it dispatched);
- 1,000 slave jobs due at the same second: when the first, the median and the last run
  request reached an agent, and the master's CPU per slot (cursor claim + dispatch).

``bench.dispatch_bench`` measures the same paths with real agents; the difference between
the two is the agents' part. Run: .venv/bin/python -m bench.master_bench [--count 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import time
from collections.abc import Awaitable, Callable

import nats
import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.common import Figure, apply_when_up, percentile, report, request_reply_floor, server, services
from bench.dispatch_bench import burst_file
from natsched import codec, subjects
from natsched.runmessages import RunReply

BURST = 1000
IN_FLIGHT = 64
JOBS = """
group = "bench"

[[jobs]]
name = "one"
mode = "slave"
command = ["/bin/true"]
targets = { agents = ["b1"] }

[[jobs]]
name = "two"
mode = "slave"
command = ["/bin/true"]
targets = { agents = ["b2"] }
"""


class InstantAgents:
    """``b1`` and ``b2`` answer every run request "started" at once; they note when each came."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.received: list[float] = []

    async def start(self) -> None:
        for name in ("b1", "b2"):
            await self._nc.subscribe(subjects.agent_run_subject(name), cb=self._answer(name))

    def _answer(self, name: str) -> Callable[[Msg], Awaitable[None]]:
        async def answer(msg: Msg) -> None:
            self.received.append(time.time())
            run_id = codec.unpack(msg.data, "run request")["run_id"]
            reply = RunReply(ok=True, agent=name, run_id=run_id, pid=1, state="started")
            await self._nc.publish(msg.reply, reply.encode())

        return answer


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def trigger_latency(nc: Client, count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        msg = await nc.request("natsched.trigger.bench.one", b"{}", timeout=10)
        samples.append((time.perf_counter() - start) * 1000)
        assert json.loads(msg.data)["ok"], msg.data
    return statistics.median(samples), percentile(samples, 99)


async def dispatched_rate(nc: Client, master: psutil.Process, seconds: float) -> tuple[float, float]:
    """Runs/s and the master's CPU microseconds per run."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(job: str) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            msg = await nc.request(f"natsched.trigger.bench.{job}", b"{}", timeout=10)
            done += bool(json.loads(msg.data)["ok"])

    cpu, start = cpu_seconds(master), time.perf_counter()
    await asyncio.gather(*(worker(("one", "two")[i % 2]) for i in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - start
    return done / elapsed, (cpu_seconds(master) - cpu) / max(done, 1) * 1e6


async def burst(nc: Client, agents: InstantAgents, master: psutil.Process) -> tuple[list[float], float]:
    """Slot -> run request at an agent (ms, sorted) for each job; the master's CPU us per slot."""
    slot = math.ceil(time.time()) + 20  # applied, indexed and scheduled well before
    body = json.dumps({"content": burst_file(BURST, slot), "source": "bench"}).encode()
    reply = json.loads((await nc.request(subjects.API_APPLY, body, timeout=60)).data)
    if not reply.get("ok"):
        raise RuntimeError(f"burst jobs not applied: {reply}")
    if time.time() > slot - 2:
        raise RuntimeError("applying the burst took past its slot; nothing to measure")
    await asyncio.sleep(slot - 1 - time.time())
    agents.received.clear()
    cpu = cpu_seconds(master)
    await asyncio.sleep(slot + 5 - time.time())
    late = sorted((t - slot) * 1000 for t in agents.received)
    if len(late) < BURST:
        raise RuntimeError(f"only {len(late)} of {BURST} due runs reached an agent")
    return late, (cpu_seconds(master) - cpu) / BURST * 1e6


async def measure(url: str, master: psutil.Process, count: int, seconds: float) -> list[Figure]:
    nc = await nats.connect(url)
    agents_nc = await nats.connect(url)
    agents = InstantAgents(agents_nc)
    await agents.start()
    await apply_when_up(nc, JOBS)
    rtt50, rtt99 = await request_reply_floor(nc)
    p50, p99 = await trigger_latency(nc, count)
    rate, cpu_per_run = await dispatched_rate(nc, master, seconds)
    late, cpu_per_slot = await burst(nc, agents, master)
    await nc.close()
    await agents_nc.close()
    due, us = f"{BURST} due at one second", rtt50 * 1000
    return [
        Figure("master: trigger -> reply p50", p50, "ms", "2 x req/reply p50", 2 * rtt50, "-", None),
        Figure("master: trigger -> reply p99", p99, "ms", "2 x req/reply p99", 2 * rtt99, "-", None),
        Figure(f"master: runs/s, {IN_FLIGHT} in flight", rate, "/s", "1000/rtt p50", 1000 / rtt50, "-", None),
        Figure("master: CPU per dispatched run", cpu_per_run, "us", "req/reply p50 us", us, "-", None),
        Figure(f"master: {due}, first at agent", late[0], "ms", "req/reply p50", rtt50, "-", None),
        Figure(
            f"master: {due}, p50 at agent", statistics.median(late), "ms", "req/reply p50", rtt50, "-", None
        ),
        Figure(f"master: {due}, last at agent", late[-1], "ms", "req/reply p50", rtt50, "-", None),
        Figure("master: CPU per due slot", cpu_per_slot, "us", "req/reply p50 us", us, "-", None),
    ]


def main(count: int, seconds: float) -> None:
    with server() as srv, services(srv.url) as running:
        master = psutil.Process(running.master().pid)
        figures = asyncio.run(measure(srv.url, master, count, seconds))
    report("natsched master alone (agents answer at once)", figures, "master")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.count, args.seconds)
