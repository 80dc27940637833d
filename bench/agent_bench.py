"""Agent figures: cron fire lateness and drift, runs/s of /bin/true, idle RSS.

Each is printed next to a raw floor measured in the same run (asyncio spawn of /bin/true,
request/reply round trip). Run: .venv/bin/python -m bench.agent_bench [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil
from nats.aio.client import Client

from agent.config import AgentConfig
from agent.runner import install_fast_child_watcher
from agent.service import AgentService
from bench.common import Figure, percentile, report, request_reply_floor, server
from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.events import parse_event
from natsched.jobspec import parse_job
from natsched.kvscan import read_stream
from natsched.models import JobSpec
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger


async def spawn_floor(count: int = 300) -> float:
    """Raw asyncio spawn + wait of /bin/true, median ms."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec("/bin/true")
        await process.wait()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def put_jobs(nc: Client, specs: list[JobSpec]) -> None:
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    for spec in specs:
        await kv.put(spec.key, codec.encode_job(spec))


async def cron_lateness(url: str, nc: Client, duration: float, jobs: int) -> tuple[float, float, float]:
    """p50/p99 ms of (process started - slot) for `jobs` every-second mirror jobs, and drift (ms).

    Read from the `started` events, so it is what a user sees: scheduling plus spawn.
    """
    specs = [
        parse_job(
            {
                "name": f"tick{i}",
                "group": "benchcron",
                "command": ["/bin/true"],
                "targets": {"agents": ["*"]},
                "triggers": [{"cron": "* * * * * *"}],
            }
        )
        for i in range(jobs)
    ]
    await put_jobs(nc, specs)
    with tempfile.TemporaryDirectory() as tmp:
        async with AgentService(
            AgentConfig(name="cron", state_dir=Path(tmp)), ConnectionSettings(url=url)
        ) as agent:
            await agent.synced(30)
            assert agent.mirror is not None
            await asyncio.sleep(2)
            since = time.time()
            await asyncio.sleep(duration)
    samples = []
    async for msg in read_stream(
        nc.jetstream(), subjects.EVENTS_STREAM, "natsched.event.cron.benchcron.*.started", since=since
    ):
        event = parse_event(msg.data, msg.subject)
        if event.started_at is not None and event.scheduled_at is not None and event.scheduled_at >= since:
            samples.append((event.started_at - event.scheduled_at) * 1000)
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    for spec in specs:
        await kv.delete(spec.key)
    tenth = max(1, len(samples) // 10)
    drift = statistics.median(samples[-tenth:]) - statistics.median(samples[:tenth])
    return statistics.median(samples), percentile(samples, 99), drift


async def runs_per_second(url: str, seconds: float, concurrency: int) -> float:
    """Runs of /bin/true through the agent's executor (process, events to JetStream), per second."""
    spec = parse_job(
        {"name": "true", "group": "benchruns", "command": ["/bin/true"], "targets": {"agents": ["*"]}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with AgentService(
            AgentConfig(name="runs", state_dir=Path(tmp)), ConnectionSettings(url=url)
        ) as agent:
            await agent.synced(30)
            assert agent.executor is not None and agent.outbox is not None
            executor = agent.executor
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    event = await executor.launch(spec, trigger=RunTrigger.MANUAL)
                    run = executor.active.get(spec.key, {}).get(event.run_id)
                    if run is not None:
                        await run.done.wait()
                    done += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return done / (time.perf_counter() - start)


def idle_rss(url: str, jobs_dir: Path) -> float:
    """RSS (MB) of a natsched-agent process, idle after syncing its jobs."""
    agent = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "natsched-agent"),
            "--name",
            "idle",
            "--state-dir",
            str(jobs_dir),
            "--server",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)
        return float(psutil.Process(agent.pid).memory_info().rss) / 2**20
    finally:
        agent.terminate()
        agent.wait(15)


async def main(duration: float, cron_jobs: int, run_seconds: float) -> None:
    figures: list[Figure] = []
    with server() as srv:
        nc = await nats.connect(srv.url)
        await ensure_all(nc.jetstream())
        rtt50, _ = await request_reply_floor(nc)
        spawn = await spawn_floor()
        p50, p99, drift = await cron_lateness(srv.url, nc, duration, cron_jobs)
        figures.append(
            Figure(
                f"cron lateness p50 ({cron_jobs} jobs/s)",
                p50,
                "ms",
                "req/reply p50",
                rtt50,
                "< 2 ms",
                p50 < 2,
            )
        )
        figures.append(
            Figure(f"cron lateness p99 ({cron_jobs} jobs/s)", p99, "ms", "req/reply p50", rtt50, "-", None)
        )
        figures.append(
            Figure(
                f"cron drift over {duration:.0f}s (last - first tenth)",
                drift,
                "ms",
                "req/reply p50",
                rtt50,
                "~0",
                abs(drift) < 2,
            )
        )
        for concurrency in (1, 32):
            rate = await runs_per_second(srv.url, run_seconds, concurrency)
            figures.append(
                Figure(
                    f"runs/s /bin/true, 1 agent, {concurrency} in flight",
                    rate,
                    "/s",
                    "1000/spawn ms",
                    1000 / spawn,
                    ">= 1500/s",
                    rate >= 1500,
                )
            )
        with tempfile.TemporaryDirectory() as tmp:
            await put_jobs(
                nc,
                [
                    parse_job(
                        {
                            "name": f"idle{i}",
                            "group": "benchidle",
                            "command": ["/bin/true"],
                            "targets": {"agents": ["*"]},
                            "triggers": [{"cron": "0 3 * * *"}],
                        }
                    )
                    for i in range(1000)
                ],
            )
            rss = await asyncio.to_thread(idle_rss, srv.url, Path(tmp))
        figures.append(Figure("agent idle RSS (1000 jobs cached)", rss, "MB", "-", 0, "< 50 MB", rss < 50))
        await nc.close()
    report("natsched agent", figures, "agent")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of cron firing to measure")
    parser.add_argument("--cron-jobs", type=int, default=20)
    parser.add_argument("--run-seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    install_fast_child_watcher()  # as natsched-agent does
    asyncio.run(main(args.duration, args.cron_jobs, args.run_seconds))
