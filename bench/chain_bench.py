"""Chain hop: a run ends on agent c1 -> the chained job's process started on agent c2.

Master and agents are real processes; the hop is measured from the upstream run's
``ended_at`` (its process exit, seen by c1) to the downstream run's ``started_at`` (its
process start on c2), both from their events — one machine, one clock. Printed next to the
raw request/reply round trip measured in the same run.
Run: .venv/bin/python -m bench.chain_bench [--count 200]
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
from nats.aio.msg import Msg

from bench.common import Figure, apply_when_up, percentile, report, request_reply_floor, server, services

BIN = Path(sys.executable).parent
JOBS = """
group = "chain"

[[jobs]]
name = "first"
mode = "slave"
command = ["/bin/true"]
targets = { agents = ["c1"] }

[[jobs]]
name = "second"
mode = "slave"
command = ["/bin/true"]
targets = { agents = ["c2"] }
triggers = [{ after = ["first"] }]
"""


async def hops(nc: Client, count: int) -> list[float]:
    ended: dict[str, float] = {}
    started: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        event = json.loads(msg.data)
        if event["job"] == "chain.first" and event["state"] == "succeeded":
            ended[event["run_id"]] = event["ended_at"]
        elif event["job"] == "chain.second" and event["state"] == "started":
            started.put_nowait((event["detail"]["parents"], event["started_at"]))

    sub = await nc.subscribe("natsched.event.>", cb=on_event)
    samples: list[float] = []
    try:
        for _ in range(count):
            deadline = time.monotonic() + 10
            while True:  # agents may still be connecting at first
                reply = json.loads((await nc.request("natsched.trigger.chain.first", b"{}", timeout=10)).data)
                if reply.get("ok") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            parent, started_at = await asyncio.wait_for(started.get(), 10)
            await asyncio.sleep(0.005)  # the upstream's final event may come after
            if parent in ended:
                samples.append((started_at - ended[parent]) * 1000)
    finally:
        await sub.unsubscribe()
    return samples


async def measure(url: str, count: int) -> list[Figure]:
    nc = await nats.connect(url)
    await apply_when_up(nc, JOBS)
    rtt50, rtt99 = await request_reply_floor(nc)
    samples = await hops(nc, count)
    await nc.close()
    p50, p99 = statistics.median(samples), percentile(samples, 99)
    return [
        Figure(
            "chain hop (end on c1 -> start on c2) p50", p50, "ms", "req/reply p50", rtt50, "< 5 ms", p50 < 5
        ),
        Figure("chain hop p99", p99, "ms", "req/reply p99", rtt99, "", None),
    ]


def main(count: int) -> None:
    with server() as srv, services(srv.url) as running:
        running.master()
        running.agent("c1")
        running.agent("c2")
        figures = asyncio.run(measure(srv.url, count))
    report("natsched chains", figures, "chain")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.count)
