"""Where trigger -> process started goes: each step's time, inside real master and agent processes.

Starts a master and one agent with ``bench/tracehook`` on their PYTHONPATH (its
``sitecustomize`` wraps the steps of the path with timestamps), sends ``--count`` triggers
one after another, and prints the median of each step: from one mark to the next, in the
order they happened, over every trigger that passed through all of them. The marks cost
about a microsecond each. Printed next to the request/reply floor of the same run.
Run: .venv/bin/python -m bench.pathtrace [--count 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import nats

from bench.common import (
    apply_when_up,
    kv_create_floor,
    request_reply_floor,
    server,
    services,
    spawn_start_floor,
)
from bench.dispatch_bench import AGENT_ENV, JOBS, wait_ready

HOOK = Path(__file__).parent / "tracehook"
SENT, ANSWERED = "client: trigger sent", "client: answer in"


async def triggers(url: str, count: int) -> tuple[list[tuple[int, str]], float, float]:
    """The client's marks, the request/reply and KV create floors (p50 ms)."""
    nc = await nats.connect(url)
    await apply_when_up(nc, JOBS)
    await wait_ready(nc)
    rtt50, _ = await request_reply_floor(nc)
    create50, _ = await kv_create_floor(nc)
    marks: list[tuple[int, str]] = []
    for _ in range(count):
        await asyncio.sleep(0.002)  # the previous run's end is not part of the next one's path
        marks.append((time.monotonic_ns(), SENT))
        await nc.request("natsched.trigger.bench.one", b"{}", timeout=10)
        marks.append((time.monotonic_ns(), ANSWERED))
    await nc.close()
    return marks, rtt50, create50


def steps(marks: list[tuple[int, str]]) -> tuple[dict[tuple[str, str], list[float]], list[float]]:
    """Per consecutive pair of marks within one trigger, the times in microseconds; the totals."""
    by_step: dict[tuple[str, str], list[float]] = defaultdict(list)
    totals: list[float] = []
    current: list[tuple[int, str]] | None = None
    for at, name in sorted(marks):
        if name == SENT:
            current = [(at, name)]
        elif current is not None:
            current.append((at, name))
            if name == ANSWERED:
                for (t0, n0), (t1, n1) in zip(current, current[1:], strict=False):
                    by_step[(n0, n1)].append((t1 - t0) / 1000)
                totals.append((at - current[0][0]) / 1000)
                current = None
    return by_step, totals


def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as trace_dir:
        env = {
            **AGENT_ENV,
            "NATSCHED_TRACE_DIR": trace_dir,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])),
        }
        with server() as srv, services(srv.url, env) as running:
            running.master()
            running.agent("b1", "--pool", "bench")
            marks, rtt50, create50 = asyncio.run(triggers(srv.url, count))
        # The services wrote their marks when they exited (services() stopped them).
        for trace in Path(trace_dir).glob("*.txt"):
            for line in trace.read_text().splitlines():
                at, name = line.split(" ", 1)
                marks.append((int(at), name))
    spawn50 = spawn_start_floor()
    by_step, totals = steps(marks)
    if not totals:
        raise SystemExit("no trigger was traced through the services (see their stderr above)")
    print(f"\ntrigger -> process started, {len(totals)} triggers one after another: where the time goes")
    print(
        f"floors this run: request/reply {rtt50 * 1000:.0f} us, KV create {create50 * 1000:.0f} us, "
        f"posix_spawn {spawn50 * 1000:.0f} us"
    )
    print(f"{'from':28} {'to':28} {'p50 us':>8} {'share':>6} {'seen':>6}")
    whole = statistics.median(totals)
    common = [(pair, times) for pair, times in by_step.items() if len(times) >= len(totals) // 2]
    for (start, end), times in sorted(common, key=lambda item: -len(item[1])):
        p50 = statistics.median(times)
        print(f"{start:28} {end:28} {p50:8.0f} {p50 / whole:6.0%} {len(times):6}")
    print(f"{'whole path p50':57} {whole:8.0f}   ({whole / 1000 / rtt50:.1f}x request/reply)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000)
    main(parser.parse_args().count)
