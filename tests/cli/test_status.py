"""``natsched status --once`` and ``--json`` against a real master and agent."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.cli.test_commands import natsched
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, stream_events, toml_jobs


async def test_status_shows_leader_agents_running_and_failures(
    master: MasterService, nats_server: EmbeddedServer, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("st1")
    await apply(
        nc,
        toml_jobs(
            job("slow", mode="slave", targets={"agents": ["st1"]}, command=["sleep", "30"]),
            job("bad", mode="slave", targets={"agents": ["st1"]}, command=["sh", "-c", "exit 4"]),
            group="stat",
        ),
    )
    await nc.request("natsched.trigger.stat.slow", b"{}", timeout=10)
    await nc.request("natsched.trigger.stat.bad", b"{}", timeout=10)

    async def both_on_record() -> bool:
        states = {(e["job"], e["state"]) for e in await stream_events(nc)}
        return {("stat.slow", "started"), ("stat.bad", "failed")} <= states

    await eventually(both_on_record, 10, "a running and a failed run")
    code, out = await asyncio.to_thread(natsched, "status", "--json", url=nats_server.url)
    assert code == 0, out
    snap = json.loads(out)
    assert [m["leader"] for m in snap["masters"]] == [True]
    assert [a["agent"] for a in snap["agents"]] == ["st1"]
    assert [r["job"] for r in snap["running"]] == ["stat.slow"]
    assert [(f["job"], f["reason"]) for f in snap["failures"]] == [("stat.bad", "exit code 4")]
    assert set(snap["queues"]) >= {"natsched-retries", "natsched-chains", "events stored"}
    code, out = await asyncio.to_thread(natsched, "status", "--once", url=nats_server.url)
    assert code == 0 and "leader" in out and "st1" in out and "stat.slow" in out and "exit code 4" in out, out
