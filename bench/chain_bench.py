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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.common import Figure, percentile, report, request_reply_floor, server

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


async def apply_when_up(nc: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = await nc.request(
                "natsched.api.apply", json.dumps({"content": JOBS, "source": "bench"}).encode(), timeout=5
            )
            if json.loads(msg.data).get("ok"):
                return
        except Exception:  # noqa: BLE001 - master not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("master did not come up")
        await asyncio.sleep(0.3)


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
    await apply_when_up(nc)
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
    with (
        server() as srv,
        tempfile.TemporaryDirectory() as tmp,
        open(Path(tmp) / "services.log", "wb") as logs,
    ):
        env = {**os.environ, "NATS_URL": srv.url}
        procs = [subprocess.Popen([str(BIN / "natsched"), "master"], env=env, stdout=logs, stderr=logs)]
        for name in ("c1", "c2"):
            procs.append(
                subprocess.Popen(
                    [str(BIN / "natsched-agent"), "--name", name, "--state-dir", str(Path(tmp) / name)],
                    env=env,
                    stdout=logs,
                    stderr=logs,
                )
            )
        try:
            figures = asyncio.run(measure(srv.url, count))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(20)
    report("natsched chains", figures, "chain")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.count)
