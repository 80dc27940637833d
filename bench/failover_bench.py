"""Failover: leader master killed -> first slot started under the new leader; slot accounting;
lost-agent detection time.

Two ``natsched master`` processes (lease ttl ``--ttl``), one agent process, every-second jobs
with misfire run-all. Each round kills the leader with SIGKILL, measures the time to the first
run started after the kill, and starts the killed master again as the new standby. At the end
every slot of every job from its first to the last settled one is counted: missed and doubled
(targets 0 and 0). Then an agent running a long job is killed and the time until its run is
marked ``lost`` is measured (``--unresponsive-after``).
Run: .venv/bin/python -m bench.failover_bench [--rounds 5] [--ttl 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.common import Figure, apply_when_up, report, request_reply_floor, server, services
from natsched.cli.masters import collect_masters
from natsched.settings import ConnectionSettings

BIN = Path(sys.executable).parent
JOBS = 3
UNRESPONSIVE = 3.0


def jobs_file() -> str:
    ticks = "\n".join(
        f'[[jobs]]\nname = "tick{i}"\nmode = "slave"\ncommand = ["/bin/true"]\n'
        f'targets = {{ agents = ["f1"] }}\ntriggers = [{{ every = "1s" }}]\n'
        'misfire = "run-all"\nmisfire_cap = 100\n'
        for i in range(JOBS)
    )
    long = (
        '[[jobs]]\nname = "long"\nmode = "slave"\ncommand = ["sleep", "60"]\ntargets = { agents = ["f2"] }\n'
    )
    return 'group = "fo"\n' + ticks + long


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def on(self, msg: Msg) -> None:
        self.items.append(json.loads(msg.data))


async def leader(conn: ConnectionSettings) -> int | None:
    found = [m for m in await collect_masters(conn, 0.3) if m["leader"]]
    return int(found[0]["master"].rsplit("-", 2)[1]) if len(found) == 1 else None


async def until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(0.05)


async def measure(
    url: str, ttl: float, rounds: int, spawn_master: Any, agents: dict[str, subprocess.Popen[bytes]]
) -> list[Figure]:
    conn = ConnectionSettings(url=url)
    nc: Client = await nats.connect(url)
    events = Events()
    await nc.subscribe("natsched.event.>", cb=events.on)
    await apply_when_up(nc, jobs_file())
    rtt50, _ = await request_reply_floor(nc, 500)
    await asyncio.sleep(3)
    failovers: list[float] = []
    for _ in range(rounds):
        pid = None
        while pid is None:
            pid = await leader(conn)
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        seen = len(events.items)

        async def started_after_kill(killed: float = killed, seen: int = seen) -> bool:
            return any(e["state"] == "started" and e["at"] > killed for e in events.items[seen:])

        await until(started_after_kill, ttl + 10)
        first = min(e["at"] for e in events.items[seen:] if e["state"] == "started" and e["at"] > killed)
        failovers.append(first - killed)
        spawn_master()
        await asyncio.sleep(2)
    await asyncio.sleep(2)
    settled = time.time() - 1.5
    slots: dict[str, list[float]] = {}
    for e in events.items:
        if e["state"] == "started" and e["job"].startswith("fo.tick"):
            slots.setdefault(e["job"], []).append(e["scheduled_at"])
    missed = doubled = 0
    for fired in slots.values():
        doubled += sum(n - 1 for n in Counter(fired).values() if n > 1)
        first_slot = min(fired)
        missed += len({first_slot + i for i in range(int(settled - first_slot) + 1)} - set(fired))
    # lost agent: f2 runs "long"; kill it and wait for the lost event
    await nc.request("natsched.trigger.fo.long", b"{}", timeout=10)
    await asyncio.sleep(1.5)
    agents["f2"].kill()
    killed = time.time()

    async def lost() -> bool:
        return any(e["state"] == "lost" for e in events.items)

    await until(lost, UNRESPONSIVE + 15)
    detection = min(e["at"] for e in events.items if e["state"] == "lost") - killed
    await nc.close()
    total = float(sum(len(v) for v in slots.values()))
    p50 = statistics.median(failovers)
    return [
        Figure(f"failover: leader killed -> first run (p50, {rounds} kills)", p50, "s", "lease ttl", ttl,
               f"<= ttl + 1 s ({ttl + 1:g} s)", p50 <= ttl + 1),
        Figure("failover worst", max(failovers), "s", "req/reply p50 ms", rtt50, "", None),
        Figure("slots missed over all rounds", missed, "", "slots", total, "0", missed == 0),
        Figure("slots doubled over all rounds", doubled, "", "slots", total, "0", doubled == 0),
        Figure("lost-agent detection (kill -> lost event)", detection, "s", "unresponsive after",
               UNRESPONSIVE, f"<= {UNRESPONSIVE + 1:g} s", detection <= UNRESPONSIVE + 1),
    ]  # fmt: skip


def main(rounds: int, ttl: float) -> None:
    with server() as srv, services(srv.url, {"NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5"}) as running:

        def spawn_master() -> None:
            running.master("--lease-ttl", str(ttl), "--unresponsive-after", str(UNRESPONSIVE))

        spawn_master()
        spawn_master()
        agents = {name: running.agent(name) for name in ("f1", "f2")}
        figures = asyncio.run(measure(srv.url, ttl, rounds, spawn_master, agents))
    report("natsched failover", figures, "failover")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.rounds, args.ttl)
