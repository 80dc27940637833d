"""A master and an agent, once warmed up, freeze their start-up heap out of garbage
collection (natsched/service.py settle_heap) and go on working: a job still runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats

from natsched import subjects
from natsched.embedded import EmbeddedServer
from tests.conftest import Process, eventually, said, wait_for_api
from tests.helpers import api, job, toml_jobs

SETTLED = "start-up settled: "


async def test_master_and_agent_freeze_their_start_up_heap_and_still_run_jobs(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    master = spawn("natsched", "master", url=nats_server.url, log_name="master.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, master)
    agent = spawn("natsched-agent", "--name", "h1", "--state-dir", str(tmp_path / "h1"), url=nats_server.url)
    witness = tmp_path / "witness"
    nc = await nats.connect(nats_server.url)
    try:
        jobs = toml_jobs(
            job("mark", mode="slave", command=["sh", "-c", f"echo ran >> {witness}"]), group="heap"
        )
        applied = await api(nc, subjects.API_APPLY, {"source": "heap.toml", "content": jobs})
        assert applied.get("ok"), applied
        await eventually(lambda: said(master, SETTLED), 20, "the master settled its heap")
        await eventually(lambda: said(agent, SETTLED), 20, "the agent settled its heap")
        # The agent's settles after its first sync, never before it was connected.
        out = agent.output()
        assert out.index("agent h1 connected") < out.index(SETTLED), out
        reply: dict[str, object] = {}
        async with asyncio.timeout(20):  # until the master has seen h1's heartbeat
            while not reply.get("ok"):
                reply = await api(nc, "natsched.trigger.heap.mark", {}, timeout=15)
                await asyncio.sleep(0 if reply.get("ok") else 0.2)
        await eventually(
            lambda: asyncio.sleep(0, result=witness.exists() and witness.read_text() == "ran\n"),
            15,
            "ran once",
        )
        assert master.output().count(SETTLED) == 1 and agent.output().count(SETTLED) == 1
    finally:
        await nc.close()
