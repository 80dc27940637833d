"""Protocol versions: an agent or a payload of a newer protocol is refused in one clear line."""

from __future__ import annotations

import asyncio
import json

import msgpack
from nats.aio.client import Client

from natsched import codec, subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.cli.test_commands import natsched
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, toml_jobs

NEWER = {"v": 2, "agent": "future", "note": "written by natsched of a later protocol"}


async def test_an_incompatible_agent_is_shown_and_not_dispatched_to(
    master: MasterService, nats_server: EmbeddedServer, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("today")
    agents = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
    await agents.put("future", msgpack.packb(NEWER))
    code, out = await asyncio.to_thread(natsched, "agents", url=nats_server.url)
    assert code == 0 and "today" in out
    assert "future: incompatible: heartbeat future: written with protocol v2, this natsched speaks v1" in out

    async def master_knows() -> bool:
        return master.dispatcher is not None and "future" in master.dispatcher.directory.incompatible

    await eventually(master_knows, 10, "the master saw the incompatible heartbeat")
    await apply(
        nc, toml_jobs(job("both", mode="slave", targets={"agents": ["today", "future"]}), group="ver")
    )
    reply = json.loads((await nc.request("natsched.trigger.ver.both", b"{}", timeout=10)).data)
    by_agent = {r["agent"]: r for r in reply["runs"]}
    assert by_agent["today"]["ok"]
    assert by_agent["future"]["ok"] is False and "written with protocol v2" in by_agent["future"]["reason"]


async def test_an_agent_refuses_a_run_request_of_a_newer_protocol(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("a1")
    request = msgpack.packb({"v": 2, "run_id": "x", "spec": {}, "trigger": "manual"})
    reply = codec.unpack(
        (await nc.request(subjects.agent_run_subject("a1"), request, timeout=5)).data, "reply"
    )
    assert reply["ok"] is False
    assert (
        reply["reason"]
        == "run request: written with protocol v2, this natsched speaks v1; upgrade this component"
    )
