"""A run whose agent dies after accepting it, before its own event is on record, is closed.

The agent here is a stand-in that speaks the real protocol over the real server (heartbeats
in the agents bucket, a reply on its run subject) and then dies the way a crashed agent
does: its ``started`` event never reaches the stream and no heartbeat ever lists the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from agent.heartbeat import sample_load
from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.embedded import EmbeddedServer
from natsched.master.directory import AgentDirectory
from natsched.master.service import MasterService
from natsched.runmessages import RunReply, decode_run_request
from natsched.settings import ConnectionSettings
from tests.conftest import eventually
from tests.helpers import apply, job, started_master, stream_events, toml_jobs

pytestmark = pytest.mark.faults


class DoomedAgent:
    """Heartbeats and accepts every run; ``die()`` stops both, leaving no event behind."""

    def __init__(self, nc: Client, name: str) -> None:
        self.nc = nc
        self.name = name
        self.accepted: list[str] = []
        self.started_at = time.time()
        self._beat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.nc.subscribe(subjects.agent_run_subject(self.name), cb=self._on_run)
        self._beat = asyncio.create_task(self._heartbeat())

    async def _on_run(self, msg: Msg) -> None:
        request = decode_run_request(msg.data)
        self.accepted.append(request.run_id)
        reply = RunReply(ok=True, agent=self.name, run_id=request.run_id, pid=4242, state="started")
        await msg.respond(reply.encode())

    async def _heartbeat(self) -> None:
        kv = await self.nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        while True:
            heartbeat = sample_load(
                agent=self.name, started_at=self.started_at, running=0, max_concurrency=8,
                tags=frozenset(), pools=frozenset(), groups=frozenset(), jobs_cached=1,
                synced_revision=0, connected_since=self.started_at,
            )  # fmt: skip
            await kv.put(self.name, codec.encode_heartbeat(heartbeat))
            await asyncio.sleep(0.5)

    async def die(self) -> None:
        assert self._beat is not None
        self._beat.cancel()
        await asyncio.gather(self._beat, return_exceptions=True)
        await self.nc.close()


@pytest.fixture
async def doomed(nats_server: EmbeddedServer) -> AsyncIterator[DoomedAgent]:
    agent = DoomedAgent(await nats.connect(nats_server.url), "doomed")
    yield agent
    if not agent.nc.is_closed:
        await agent.die()


async def test_a_run_accepted_by_an_agent_that_died_before_its_event_is_closed_lost(
    conn: ConnectionSettings, nc: Client, doomed: DoomedAgent
) -> None:
    async with MasterService(conn, unresponsive_after=2.0) as master:
        await doomed.start()

        async def known() -> bool:
            return master.dispatcher is not None and master.dispatcher.directory.get("doomed") is not None

        await eventually(known, 10, "the agent heartbeating")
        await apply(nc, toml_jobs(job("w", mode="slave", targets={"agents": ["doomed"]}), group="un"))
        reply = json.loads((await nc.request("natsched.trigger.un.w", b"{}", timeout=10)).data)
        [run] = reply["runs"]
        assert run["ok"] and run["state"] == "started", reply
        await doomed.die()  # before any event of its own, before a heartbeat listing the run

        async def closed() -> bool:
            return any(e["run_id"] == run["run_id"] for e in await stream_events(nc) if e["state"] == "lost")

        await eventually(closed, 15, "the accepted run recorded lost")
        [lost] = [e for e in await stream_events(nc) if e["run_id"] == run["run_id"]]
        assert lost["agent"] == "doomed" and lost["job"] == "un.w" and "unresponsive" in lost["reason"]


async def test_a_run_of_an_agent_that_restarted_before_anyone_noticed_is_closed_lost(
    master: MasterService, nc: Client, doomed: DoomedAgent
) -> None:
    await doomed.start()

    async def known() -> bool:
        return master.dispatcher is not None and master.dispatcher.directory.get("doomed") is not None

    await eventually(known, 10, "the agent heartbeating")
    await apply(nc, toml_jobs(job("w", mode="slave", targets={"agents": ["doomed"]}), group="rs"))
    reply = json.loads((await nc.request("natsched.trigger.rs.w", b"{}", timeout=10)).data)
    [run] = reply["runs"]
    assert run["ok"], reply
    # A new life at once (a crash and a restart well within the unresponsive period), with no
    # record of the run: only the master knows it was accepted.
    doomed.started_at = time.time()

    async def closed() -> bool:
        return any(e["run_id"] == run["run_id"] for e in await stream_events(nc) if e["state"] == "lost")

    await eventually(closed, 15, "the run of the previous life recorded lost")
    [lost] = [e for e in await stream_events(nc) if e["run_id"] == run["run_id"]]
    assert "restarted" in lost["reason"], lost


async def test_a_restart_seen_while_standing_by_is_closed_once_this_master_leads(
    conn: ConnectionSettings, nc: Client, doomed: DoomedAgent
) -> None:
    # Another master's lease: this one stands by until it expires (5 s). Seen in CI: a master
    # whose leader duties began after the restart never knew the previous life, and the run
    # of that life stayed open.
    js = nc.jetstream()
    await ensure_all(js)
    state = await js.key_value(subjects.STATE_BUCKET)
    await state.put(subjects.LEASE_KEY, codec.pack({"master": "gone", "term": 1, "renewed": time.time()}))
    master = await started_master(lambda: MasterService(conn))
    try:
        assert master.lease is not None and master.dispatcher is not None
        directory = master.dispatcher.directory
        await doomed.start()
        await eventually(lambda: _heard(directory, doomed), 10, "the agent heartbeating")
        await apply(nc, toml_jobs(job("w", mode="slave", targets={"agents": ["doomed"]}), group="sb"))
        reply = json.loads((await nc.request("natsched.trigger.sb.w", b"{}", timeout=10)).data)
        [run] = reply["runs"]
        assert run["ok"], reply
        doomed.started_at = time.time()  # a crash and a restart, no record of the run
        await eventually(lambda: _heard(directory, doomed), 10, "the new life heartbeating")
        assert not master.lease.is_leader.is_set(), "led before the restart: this test proves nothing"

        async def closed() -> bool:
            return any(e["run_id"] == run["run_id"] for e in await stream_events(nc) if e["state"] == "lost")

        await eventually(closed, 25, "the run of the previous life recorded lost")
        assert master.lease.is_leader.is_set()
        [lost] = [e for e in await stream_events(nc) if e["run_id"] == run["run_id"]]
        assert "restarted" in lost["reason"], lost
    finally:
        await master.__aexit__(None, None, None)


async def _heard(directory: AgentDirectory, agent: DoomedAgent) -> bool:
    """The master holds ``agent``'s heartbeat of its current life."""
    heartbeat = directory.get(agent.name)
    return heartbeat is not None and heartbeat.started_at == agent.started_at
