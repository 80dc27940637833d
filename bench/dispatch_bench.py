"""Dispatch figures: trigger -> process started, dispatched runs/s across two agents, and
1,000 slave jobs due at the same second (half on each agent): slot -> last started.

What the trigger -> started path cannot go below, measured in the same run: two request/reply
round trips (client -> master -> agent and back), the run's claim (one KV create) and the
spawn (``os.posix_spawn`` returning). Its sum is printed as "the path's floor", so what
natsched adds on top of the physics of that path is its own figure.

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
import math
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.aio.client import Client

from bench.common import (
    Figure,
    apply_when_up,
    kv_create_floor,
    percentile,
    report,
    request_reply_floor,
    server,
    services,
    spawn_start_floor,
)
from natsched import subjects
from natsched.claims import claim, open_claims
from natsched.events import parse_event
from natsched.kvscan import read_stream

BIN = Path(sys.executable).parent
BURST = 1000
# 500 runs arrive at each agent at once: above the default limit of 64 they would be refused.
AGENT_ENV = {"NATSCHED_AGENT_MAX_CONCURRENCY": "1024"}
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


def burst_file(jobs: int, slot: int) -> str:
    """``jobs`` slave jobs (alternately on b1 and b2) due once, at ``slot`` (UTC)."""
    t = datetime.fromtimestamp(slot, UTC)
    cron = f"{t.second} {t.minute} {t.hour} {t.day} {t.month} *"
    job = 'name = "j{i}"\nmode = "slave"\ncommand = ["/bin/true"]\ntargets = {{ agents = ["{agent}"] }}\n'
    return 'group = "burst"\n' + "".join(
        "[[jobs]]\n" + job.format(i=i, agent=f"b{1 + i % 2}") + f'triggers = [{{ cron = "{cron}" }}]\n'
        for i in range(jobs)
    )


async def master_burst(nc: Client, jobs: int) -> tuple[float, float, int]:
    """``jobs`` slave jobs due at the same second: p50 and last (started - slot) in ms, runs started."""
    slot = math.ceil(time.time()) + 20  # applied, indexed and scheduled well before
    body = json.dumps({"content": burst_file(jobs, slot), "source": "bench"}).encode()
    reply = json.loads((await nc.request(subjects.API_APPLY, body, timeout=60)).data)
    if not reply.get("ok"):
        raise RuntimeError(f"burst jobs not applied: {reply}")
    if time.time() > slot - 1:
        raise RuntimeError("applying the burst took past its slot; nothing to measure")
    await asyncio.sleep(slot + 15 - time.time())
    late = []
    async for msg in read_stream(
        nc.jetstream(), subjects.EVENTS_STREAM, "natsched.event.*.burst.*.started", since=slot - 1
    ):
        event = parse_event(msg.data, msg.subject)
        if event.started_at is not None:
            late.append((event.started_at - slot) * 1000)
    if not late:
        raise RuntimeError("no run of the burst started")
    return statistics.median(late), max(late), len(late)


async def claim_latency(nc: Client, count: int = 500) -> float:
    """natsched's claim of a run (``natsched/claims.py``) on the real bucket, p50 ms."""
    kv = await open_claims(nc.jetstream())
    samples = []
    for i in range(count):
        start = time.perf_counter()
        result = await claim(
            kv, subjects.agent_claim_key("benchclaim", f"bench{i}-{time.time_ns()}"), agent="b"
        )
        samples.append((time.perf_counter() - start) * 1000)
        assert result.won
    return statistics.median(samples)


def path_figures(p50: float, rtt50: float, create50: float, claim50: float, spawn50: float) -> list[Figure]:
    """trigger -> started against the sum of what its path cannot avoid, and each part."""
    floor = 2 * rtt50 + create50 + spawn50
    return [
        Figure("  path: KV create p50 (a claim's floor)", create50, "ms", "req/reply p50", rtt50, "-", None),
        Figure("  path: natsched's claim p50", claim50, "ms", "KV create p50", create50, "-", None),
        Figure("  path: posix_spawn /bin/true p50", spawn50, "ms", "req/reply p50", rtt50, "-", None),
        Figure("  path: 2 req/reply + KV create + spawn", floor, "ms", "req/reply p50", rtt50, "-", None),
        Figure("trigger -> started p50, against its path", p50, "ms", "path floor", floor, "-", None),
    ]


async def measure(url: str, count: int, seconds: float) -> list[Figure]:
    nc = await nats.connect(url)
    await apply_when_up(nc, JOBS)
    await wait_ready(nc)
    rtt50, rtt99 = await request_reply_floor(nc)
    create50, _ = await kv_create_floor(nc)
    claim50 = await claim_latency(nc)
    spawn50 = spawn_start_floor()
    p50, p99 = await trigger_latency(nc, count)
    rate = await dispatched_rate(nc, seconds, 64)
    burst50, last, started = await master_burst(nc, BURST)
    await nc.close()
    due = f"{BURST} slave jobs due at one second, 2 agents"
    return [
        Figure(f"{due}: p50 start", burst50, "ms", "req/reply p50", rtt50, "-", None),
        Figure(f"{due}: last start ({started} started)", last, "ms", "req/reply p50", rtt50, "-", None),
        Figure(
            "trigger -> process started p50", p50, "ms", "req/reply p50", rtt50, "<= 4x", p50 <= 4 * rtt50
        ),  # noqa: E501
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
        *path_figures(p50, rtt50, create50, claim50, spawn50),
    ]


def main(count: int, seconds: float) -> None:
    with server() as srv, services(srv.url, AGENT_ENV) as running:
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
