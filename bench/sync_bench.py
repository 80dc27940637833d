"""Agent cold sync (10k, 100k jobs) and change -> cache latency, next to raw nats-py floors.

Run: .venv/bin/python -m bench.sync_bench [--sizes 10000 100000] [--changes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from agent.config import AgentConfig
from agent.service import AgentService
from bench.common import Figure, kv_put_watch_floor, percentile, report, server
from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.jobspec import parse_job
from natsched.settings import ConnectionSettings


async def fill(nc: Client, count: int, start: int = 0) -> None:
    """Write ``count`` distinct job definitions (j<start>...) with many publishes in flight."""
    js = nc.jetstream()
    prefix = subjects.kv_subject_prefix(subjects.JOBS_BUCKET)
    pending = []
    for i in range(start, start + count):
        spec = parse_job(
            {
                "name": f"j{i}",
                "group": f"g{i % 100}",
                "command": ["/bin/true", str(i)],
                "targets": {"agents": ["*"]},
                "triggers": [{"cron": f"{i % 60} * * * *"}],
            }
        )
        pending.append(js.publish(prefix + spec.key, codec.encode_job(spec)))
        if len(pending) >= 256:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def raw_cold_read(nc: Client) -> float:
    """Floor: stream every key of the bucket through an ordered consumer, doing nothing with it."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.kv_stream(subjects.JOBS_BUCKET))
    done = asyncio.Event()
    start = time.perf_counter()

    async def on_msg(msg: Msg) -> None:
        if msg.metadata.num_pending == 0:
            done.set()

    sub = await js.subscribe(
        subjects.kv_subject_prefix(subjects.JOBS_BUCKET) + ">",
        stream=info.config.name,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
    )
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return elapsed


async def cold_sync(url: str, state_dir: Path) -> float:
    config = AgentConfig(name="bench", state_dir=state_dir)
    start = time.perf_counter()
    async with AgentService(config, ConnectionSettings(url=url)) as agent:
        await agent.synced(120)
        return time.perf_counter() - start


async def change_latency(url: str, nc: Client, state_dir: Path, changes: int) -> tuple[float, float]:
    """KV put of a changed definition -> committed in a live agent's SQLite cache, in ms."""
    config = AgentConfig(name="bench", state_dir=state_dir)
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    samples = []
    async with AgentService(config, ConnectionSettings(url=url)) as agent:
        await agent.synced(120)
        assert agent.sync is not None
        seen: asyncio.Queue[float] = asyncio.Queue()
        agent.sync.listeners.append(lambda keys: seen.put_nowait(time.perf_counter()))
        for i in range(changes):
            spec = parse_job(
                {
                    "name": "changing",
                    "group": "bench",
                    "command": ["/bin/echo", str(i)],
                    "targets": {"agents": ["*"]},
                }
            )
            start = time.perf_counter()
            await kv.put(spec.key, codec.encode_job(spec))
            samples.append((await asyncio.wait_for(seen.get(), 10) - start) * 1000)
    return statistics.median(samples), percentile(samples, 99)


async def main(sizes: list[int], changes: int) -> None:
    figures: list[Figure] = []
    with server() as srv:
        nc = await nats.connect(srv.url)
        await ensure_all(nc.jetstream())
        floor_p50, floor_p99 = await kv_put_watch_floor(nc)
        filled = 0
        targets = {10_000: 0.5, 100_000: 3.0}
        for size in sorted(sizes):
            await fill(nc, size - filled, start=filled)  # j<filled>...: new keys, not rewrites
            filled = size
            raw = await raw_cold_read(nc)
            with tempfile.TemporaryDirectory() as tmp:
                ours = await cold_sync(srv.url, Path(tmp))
            target = targets.get(size)
            figures.append(
                Figure(
                    f"cold sync {size} jobs",
                    ours,
                    "s",
                    "raw cold read",
                    raw,
                    f"< {target} s" if target else "-",
                    None if target is None else ours < target,
                )
            )
        with tempfile.TemporaryDirectory() as tmp:
            p50, p99 = await change_latency(srv.url, nc, Path(tmp), changes)
        figures.append(
            Figure(
                "definition change -> agent cache p50", p50, "ms", "KV put->watch p50", floor_p50, "-", None
            )
        )
        figures.append(
            Figure(
                "definition change -> agent cache p99", p99, "ms", "KV put->watch p99", floor_p99, "-", None
            )
        )
        await nc.close()
    report("natsched agent sync", figures, "sync")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.sizes, args.changes))
