"""Dispatch figures: trigger -> process started, and dispatched runs/s across two agents.

Master and agents run as real processes (``natsched master``, ``natsched-agent``); this
process is the client publishing to ``natsched.trigger.<job>``. The reply arrives when
the process has started on the agent, so its round trip is "trigger -> started".
Run: .venv/bin/python -m bench.dispatch_bench [--count 500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import nats
from nats.aio.client import Client

from bench.common import Figure, apply_when_up, percentile, report, request_reply_floor, server, services

BIN = Path(sys.executable).parent
JOBS = """
group = "bench"

[[jobs]]
name = "one"
mode = "slave"
command = ["/bin/true"]
targets = { agents = ["b1"] }

[[jobs]]
name = "pool"
mode = "load-balance"
balance = "running"
command = ["/bin/true"]
targets = { pools = ["bench"] }
"""


async def wait_ready(nc: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await nc.request("natsched.trigger.bench.pool", b"{}", timeout=2)
            if json.loads(msg.data).get("ok"):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("master and agents did not come up")


async def trigger_latency(nc: Client, count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        msg = await nc.request("natsched.trigger.bench.one", b"{}", timeout=10)
        samples.append((time.perf_counter() - start) * 1000)
        assert json.loads(msg.data)["ok"], msg.data
    return statistics.median(samples), percentile(samples, 99)


async def dispatched_rate(nc: Client, seconds: float, in_flight: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            msg = await nc.request("natsched.trigger.bench.pool", b"{}", timeout=10)
            if json.loads(msg.data)["ok"]:
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.perf_counter() - start)


async def measure(url: str, count: int, seconds: float) -> list[Figure]:
    nc = await nats.connect(url)
    await apply_when_up(nc, JOBS)
    await wait_ready(nc)
    rtt50, rtt99 = await request_reply_floor(nc)
    p50, p99 = await trigger_latency(nc, count)
    rate = await dispatched_rate(nc, seconds, 64)
    await nc.close()
    return [
        Figure("trigger -> process started p50", p50, "ms", "req/reply p50", rtt50, "< 2 ms", p50 < 2),
        Figure("trigger -> process started p99", p99, "ms", "req/reply p99", rtt99, "< 10 ms", p99 < 10),
        Figure(
            "dispatched runs/s, 2 agents, 64 in flight",
            rate,
            "/s",
            "1000/rtt p50",
            1000 / rtt50,
            ">= 1500/s",
            rate >= 1500,
        ),
    ]


def main(count: int, seconds: float) -> None:
    with server() as srv, services(srv.url) as running:
        running.master()
        running.agent("b1", "--pool", "bench")
        running.agent("b2", "--pool", "bench")
        figures = asyncio.run(measure(srv.url, count, seconds))
    report("natsched dispatch", figures, "dispatch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.count, args.seconds)
