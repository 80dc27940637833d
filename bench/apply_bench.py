"""Apply one changed job with 100k jobs stored: request -> reply of ``natsched.api.apply``.

The master is a real process holding every definition in its job index; each apply changes
one job's command, so it is planned, checked (chain graph, calendars), written with
compare-and-set and seen by the index before the reply. Printed next to the raw KV put
(acknowledged) of the same run: an apply is at least one such put.
Run: .venv/bin/python -m bench.apply_bench [--stored 100000] [--applies 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time

import nats
from nats.aio.client import Client

from bench.common import Figure, apply_when_up, percentile, report, server, services
from bench.sync_bench import fill
from natsched import subjects
from natsched.buckets import ensure_all

TARGET_MS = 50.0


def job_file(i: int) -> str:
    # g7.j7 is one of the stored jobs (fill() puts job j<i> into group g<i % 100>).
    return (
        'group = "g7"\n[[jobs]]\nname = "j7"\nmode = "slave"\n'
        f'command = ["/bin/true", "{i}"]\ntargets = {{ agents = ["*"] }}\n'
        'triggers = [{ cron = "7 * * * *" }]\n'
    )


async def kv_put_floor(nc: Client, count: int) -> tuple[float, float]:
    """Raw acknowledged KV put of a job-sized value, p50 and p99 in ms."""
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    value = b"x" * 200
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await kv.put("floor.put", value)
        samples.append((time.perf_counter() - start) * 1000)
    await kv.delete("floor.put")
    return statistics.median(samples), percentile(samples, 99)


async def apply_latency(nc: Client, applies: int) -> list[float]:
    samples = []
    for i in range(applies):
        body = json.dumps({"content": job_file(i), "source": "bench"}).encode()
        start = time.perf_counter()
        reply = json.loads((await nc.request(subjects.API_APPLY, body, timeout=10)).data)
        samples.append((time.perf_counter() - start) * 1000)
        if not reply.get("ok") or reply["updated"] != ["g7.j7"]:
            raise RuntimeError(f"apply did not update g7.j7: {reply}")
    return samples


async def main(stored: int, applies: int) -> None:
    with server() as srv:
        nc = await nats.connect(srv.url)
        await ensure_all(nc.jetstream())
        await fill(nc, stored)
        put50, put99 = await kv_put_floor(nc, 500)
        with services(srv.url) as running:
            running.master()
            await apply_when_up(nc, job_file(-1), timeout=120)  # up, with all definitions indexed
            samples = await apply_latency(nc, applies)
        await nc.close()
    p50, p99 = statistics.median(samples), percentile(samples, 99)
    figures = [
        Figure(
            f"apply 1 changed job, {stored} stored, p50",
            p50,
            "ms",
            "KV put p50",
            put50,
            f"< {TARGET_MS:g} ms",
            p50 < TARGET_MS,
        ),
        Figure(f"apply 1 changed job, {stored} stored, p99", p99, "ms", "KV put p99", put99, "-", None),
    ]
    report("natsched apply", figures, "apply")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--applies", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.stored, args.applies))
