"""Dispatch figures: trigger -> process started, dispatched runs/s across two agents, and
1,000 slave jobs due at the same second (half on each agent): slot -> last started.

Trigger -> process started, two ways: the way there (trigger sent -> the process's start,
as its agent recorded it when ``posix_spawn`` returned, on the same clock), which is what a
task queue's "task started" compares to, and the round trip (the trigger's reply comes once
the process has started: the way back, agent -> master -> client, added). What each cannot go
below, measured in the same run: the way there, one request/reply round trip (client ->
master -> agent), the run's claim (one KV create) and the spawn (``os.posix_spawn``
returning); the round trip, a second request/reply round trip on top. Each sum is printed as
that path's floor, so what natsched adds on top of the physics of the path is its own figure.

Master and agents run as real processes (``natsched master``, ``natsched-agent``); this
process is the client publishing to ``natsched.trigger.<job>``.
The burst's floor is the agents alone: 1,000 run requests of jobs applied with the burst's,
sent by this client straight to the agents as the master sends them (256 out to an agent at
once): what the agents allow, with nothing of the master's in the path.
Around the runs/s figure, the CPU of every process (and of the jobs the agents reaped) is
read: CPU per run against the spawn's own CPU, and the runs/s the machine's cores allow at
that cost (``bench/cpubudget.py``).
Run: .venv/bin/python -m bench.dispatch_bench [--count 500] [--seconds 5] [--burst-only] [--burst 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

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
from bench.cpubudget import CpuMeter, budget_figures, spawn_cpu_floor
from natsched import codec, subjects
from natsched.claims import claim, open_claims
from natsched.events import new_run_id, parse_event
from natsched.jobfile import parse_job_document
from natsched.kvscan import read_stream
from natsched.master.window import REQUESTS_PER_TARGET
from natsched.models import JobSpec
from natsched.runmessages import RunRequest
from natsched.vocab import RunTrigger

BIN = Path(sys.executable).parent
BURST = 1000
TARGET_RATE = 1500  # dispatched runs/s across the two agents
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


async def trigger_latency(nc: Client, count: int) -> tuple[float, float, float, float]:
    """One trigger at a time: p50 and p99 (ms) of the round trip (the reply comes once the
    process has started), then of the way there only: trigger sent -> the process's start as
    its agent recorded it (``started_at``, taken when ``posix_spawn`` returned: the program
    exec'd), both on this machine's clock. The round trip adds the way back (agent -> master
    -> client); the one-way figure is what a task queue's "task started" compares to."""
    samples = []
    sent: dict[str, float] = {}
    since = time.time()
    for _ in range(count):
        at = time.time()
        start = time.perf_counter()
        msg = await nc.request("natsched.trigger.bench.one", b"{}", timeout=10)
        samples.append((time.perf_counter() - start) * 1000)
        reply = json.loads(msg.data)
        assert reply["ok"], msg.data
        sent[reply["runs"][0]["run_id"]] = at
    await asyncio.sleep(1)  # the last started events are on record
    one_way = [
        (started_at - sent.pop(run_id)) * 1000
        async for run_id, started_at in starts(nc, "bench", "one", since)
        if run_id in sent
    ]
    if sent:
        raise RuntimeError(f"{len(sent)} of {count} triggered runs have no started event")
    return (
        statistics.median(samples),
        percentile(samples, 99),
        statistics.median(one_way),
        percentile(one_way, 99),
    )


async def dispatched_rate(nc: Client, seconds: float, in_flight: int) -> tuple[float, int]:
    """Runs/s triggered by ``in_flight`` callers at once for ``seconds``, and how many."""
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
    return done / (time.perf_counter() - start), done


def burst_file(jobs: int, slot: int | None, group: str = "burst") -> str:
    """``jobs`` slave jobs (alternately on b1 and b2) due once, at ``slot`` (UTC); with ``slot``
    None, jobs without a trigger (run when asked)."""
    trigger = ""
    if slot is not None:
        t = datetime.fromtimestamp(slot, UTC)
        trigger = f'triggers = [{{ cron = "{t.second} {t.minute} {t.hour} {t.day} {t.month} *" }}]\n'
    job = 'name = "j{i}"\nmode = "slave"\ncommand = ["/bin/true"]\ntargets = {{ agents = ["{agent}"] }}\n'
    return f'group = "{group}"\n' + "".join(
        "[[jobs]]\n" + job.format(i=i, agent=f"b{1 + i % 2}") + trigger for i in range(jobs)
    )


async def starts(nc: Client, group: str, job: str, since: float) -> AsyncIterator[tuple[str, float]]:
    """(run id, started_at) of every run of ``group``'s jobs (``job``: one, or ``*``) recorded
    started from about ``since`` (wall clock) on."""
    async for msg in read_stream(
        nc.jetstream(), subjects.EVENTS_STREAM, f"natsched.event.*.{group}.{job}.started", since=since - 1
    ):
        event = parse_event(msg.data, msg.subject)
        if event.started_at is not None:
            yield event.run_id, event.started_at


async def started_since(nc: Client, group: str, slot: float) -> list[float]:
    """(started - slot) in ms of every run of ``group``'s jobs recorded started."""
    late = [(started_at - slot) * 1000 async for _, started_at in starts(nc, group, "*", slot)]
    if not late:
        raise RuntimeError(f"no run of {group} started")
    return late


async def agents_burst(nc: Client, specs: tuple[JobSpec, ...], window: int) -> tuple[float, float, int]:
    """The agents' floor for a burst: a run request for each of ``specs`` (applied jobs, each
    run for the first time, as the burst's), built beforehand and sent from a second's start
    by this client (no master in the path), ``window`` out to an agent at once as the master
    sends them (the next sent as one is answered). p50 and last (started - that second) in ms,
    runs started."""
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    term = int(codec.unpack((await state.get(subjects.LEASE_KEY)).value or b"", "lease")["term"])
    slot = math.ceil(time.time()) + 1
    queues: dict[str, collections.deque[tuple[int, bytes]]] = {}
    for i, spec in enumerate(specs):
        request = RunRequest(
            run_id=new_run_id(), spec=spec, trigger=RunTrigger.CRON, scheduled_at=slot, term=term
        )
        queues.setdefault(spec.targets.agents[0], collections.deque()).append((i, request.encode()))
    agent_of = {i: agent for agent, queue in queues.items() for i, _ in queue}
    inbox = nc.new_inbox()
    answered = asyncio.Event()
    replies = 0

    async def send_next(agent: str) -> None:
        if queues[agent]:
            i, payload = queues[agent].popleft()
            await nc.publish(subjects.agent_run_subject(agent), payload, reply=f"{inbox}.{i}")

    async def on_reply(msg: Msg) -> None:
        nonlocal replies
        replies += 1
        if replies == len(specs):
            answered.set()
        await send_next(agent_of[int(msg.subject.rsplit(".", 1)[1])])

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    await asyncio.sleep(slot - time.time())
    for agent in queues:
        for _ in range(window):
            await send_next(agent)
    async with asyncio.timeout(60 + len(specs) / 100):
        await answered.wait()
    await sub.unsubscribe()
    await asyncio.sleep(3)  # the last started events are on record
    late = await started_since(nc, "floor", slot)
    return statistics.median(late), max(late), len(late)


async def apply_checked(nc: Client, content: str) -> None:
    body = json.dumps({"content": content, "source": "bench"}).encode()
    reply = json.loads((await nc.request(subjects.API_APPLY, body, timeout=60)).data)
    if not reply.get("ok"):
        raise RuntimeError(f"burst jobs not applied: {reply}")


async def bursts(nc: Client, jobs: int) -> tuple[tuple[float, float, int], tuple[float, float, int]]:
    """``jobs`` slave jobs due at the same second, and the agents' floor for them (``jobs`` other
    jobs, applied at the same time, sent by this client 14 s before): for each, p50 and last
    (started - slot) in ms, and the runs started."""
    # Applied, indexed, scheduled and synced well before; the runs of a bigger burst take longer.
    lead, tail = 30 + jobs / 250, 15 + jobs / 500
    slot = math.ceil(time.time() + lead)
    floor_jobs = burst_file(jobs, None, "floor")
    await apply_checked(nc, burst_file(jobs, slot))
    await apply_checked(nc, floor_jobs)
    if time.time() > slot - 16 - jobs / 500:
        raise RuntimeError("applying the burst took past its floor's time; nothing to measure")
    await asyncio.sleep(slot - 16 - jobs / 500 - time.time())
    specs = parse_job_document(floor_jobs, source="bench").jobs
    floor = await agents_burst(nc, specs, REQUESTS_PER_TARGET)
    await asyncio.sleep(slot + tail - time.time())
    late = await started_since(nc, "burst", slot)
    return (statistics.median(late), max(late), len(late)), floor


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


def path_figures(
    p50: float, one_way50: float, rtt50: float, create50: float, claim50: float, spawn50: float
) -> list[Figure]:
    """trigger -> started against the sum of what its path cannot avoid, and each part: the
    round trip crosses two request/reply round trips, the way there one."""
    there = rtt50 + create50 + spawn50
    floor = rtt50 + there
    return [
        Figure("  path: KV create p50 (a claim's floor)", create50, "ms", "req/reply p50", rtt50, "-", None),
        Figure("  path: natsched's claim p50", claim50, "ms", "KV create p50", create50, "-", None),
        Figure("  path: posix_spawn /bin/true p50", spawn50, "ms", "req/reply p50", rtt50, "-", None),
        Figure("  path: 1 req/reply + KV create + spawn", there, "ms", "req/reply p50", rtt50, "-", None),
        Figure("  path: 2 req/reply + KV create + spawn", floor, "ms", "req/reply p50", rtt50, "-", None),
        Figure(
            "trigger -> started p50 (one way), against its path",
            one_way50,
            "ms",
            "path floor",
            there,
            "-",
            None,
        ),
        Figure("trigger -> started reply p50, against its path", p50, "ms", "path floor", floor, "-", None),
    ]


async def burst_figures(nc: Client, rtt50: float, jobs: int = BURST) -> list[Figure]:
    (burst50, last, started), (floor50, floor_last, floor_started) = await bursts(nc, jobs)
    due = f"{jobs} slave jobs due at one second, 2 agents"
    sent = f"{jobs} sent, {REQUESTS_PER_TARGET} out to each"
    return [
        Figure(f"{due}: p50 start", burst50, "ms", "agents' p50", floor50, "-", None),
        Figure(f"{due}: last start ({started} started)", last, "ms", "agents' last", floor_last, "-", None),
        Figure(f"  agents alone, {sent}: p50 start", floor50, "ms", "req/reply p50", rtt50, "-", None),
        Figure(
            f"  agents alone, {sent}: last ({floor_started} started)",
            floor_last,
            "ms",
            "req/reply p50",
            rtt50,
            "-",
            None,
        ),
    ]


async def measure(
    url: str, pids: dict[str, int], count: int, seconds: float, burst_only: bool = False, burst: int = BURST
) -> list[Figure]:
    nc = await nats.connect(url)
    await apply_when_up(nc, JOBS)
    await wait_ready(nc)
    rtt50, rtt99 = await request_reply_floor(nc)
    if burst_only:
        figures = await burst_figures(nc, rtt50, burst)
        await nc.close()
        return figures
    create50, _ = await kv_create_floor(nc)
    claim50 = await claim_latency(nc)
    spawn50 = spawn_start_floor()
    spawn_cpu = spawn_cpu_floor()
    p50, p99, one_way50, one_way99 = await trigger_latency(nc, count)
    meter = CpuMeter(pids)
    meter.start()
    rate, runs = await dispatched_rate(nc, seconds, 64)
    meter.stop()
    bursts = await burst_figures(nc, rtt50, burst)
    await nc.close()
    return [
        *bursts,
        Figure(
            "trigger -> process started p50 (one way)",
            one_way50,
            "ms",
            "req/reply p50",
            rtt50,
            "<= 4x",
            one_way50 <= 4 * rtt50,
        ),
        Figure(
            "trigger -> process started p99 (one way)",
            one_way99,
            "ms",
            "req/reply p99",
            rtt99,
            "< 10 ms",
            one_way99 < 10,
        ),
        Figure(
            "trigger -> started reply p50 (round trip)",
            p50,
            "ms",
            "req/reply p50",
            rtt50,
            "<= 4x",
            p50 <= 4 * rtt50,
        ),
        Figure(
            "trigger -> started reply p99 (round trip)",
            p99,
            "ms",
            "req/reply p99",
            rtt99,
            "< 10 ms",
            p99 < 10,
        ),
        Figure(
            "dispatched runs/s, 2 agents, 64 in flight",
            rate,
            "/s",
            "1000/rtt p50",
            1000 / rtt50,
            f">= {TARGET_RATE:g}/s",
            rate >= TARGET_RATE,
        ),
        *path_figures(p50, one_way50, rtt50, create50, claim50, spawn50),
        *budget_figures(meter, runs, spawn_cpu, TARGET_RATE),
    ]


def main(count: int, seconds: float, burst_only: bool = False, burst: int = BURST) -> None:
    with server() as srv, services(srv.url, AGENT_ENV) as running:
        assert srv.pid is not None
        pids = {
            "nats-server": srv.pid,
            "master": running.master().pid,
            "agent b1": running.agent("b1", "--pool", "bench").pid,
            "agent b2": running.agent("b2", "--pool", "bench").pid,
            "load client": os.getpid(),
        }
        figures = asyncio.run(measure(srv.url, pids, count, seconds, burst_only, burst))
    report("natsched dispatch", figures, "dispatch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst-only", action="store_true", help="only the jobs due at one second")
    parser.add_argument("--burst", type=int, default=BURST, help="slave jobs due at one second")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.count, args.seconds, args.burst_only, args.burst)
