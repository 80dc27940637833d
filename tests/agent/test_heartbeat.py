"""The agent's heartbeat on a real server: a clean stop withdraws it at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client

from agent.config import AgentConfig
from agent.heartbeat import HeartbeatPublisher, sample_load
from agent.nameguard import NameGate
from agent.service import AgentService
from natsched import subjects
from natsched.buckets import ensure_all
from natsched.embedded import EmbeddedServer
from natsched.kvscan import scan
from natsched.master.service import MasterService
from natsched.models import Heartbeat
from natsched.settings import ConnectionSettings
from tests.conftest import eventually


async def _live(nc: Client) -> set[str]:
    return set(await scan(nc.jetstream(), subjects.AGENTS_BUCKET))


async def test_a_cleanly_stopped_agent_is_gone_from_the_live_agents_at_once(
    master: MasterService, nc: Client, conn: ConnectionSettings, tmp_path: Path
) -> None:
    config = AgentConfig(name="h1", state_dir=tmp_path / "h1", heartbeat_interval=0.2)
    agent = AgentService(config, conn)
    await agent.__aenter__()
    try:
        await agent.synced(10)

        async def beating() -> bool:
            return "h1" in await _live(nc)

        await eventually(beating, 10, "h1 heartbeating")
    finally:
        await agent.__aexit__(None, None, None)
    assert "h1" not in await _live(nc), "a clean stop must not leave the agent live for the TTL"
    await eventually(lambda: _absent(master, "h1"), 5, "the master dropping h1")


async def _absent(master: MasterService, name: str) -> bool:
    assert master.dispatcher is not None
    return name not in {hb.agent for hb in await master.dispatcher.live_agents()}


async def test_a_stopping_agent_leaves_a_newer_heartbeat_of_its_name_alone(
    master: MasterService, nc: Client, conn: ConnectionSettings, tmp_path: Path
) -> None:
    """Another process wrote under the name since (a twin): its heartbeat is not ours to delete."""
    config = AgentConfig(name="h2", state_dir=tmp_path / "h2", heartbeat_interval=30)
    agent = AgentService(config, conn)
    await agent.__aenter__()
    try:
        await agent.synced(10)

        async def beating() -> bool:
            return "h2" in await _live(nc)

        await eventually(beating, 10, "h2 heartbeating")
        kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        theirs = (await kv.get("h2")).value
        assert theirs is not None
        await kv.put("h2", theirs)  # the twin's write, after ours
    finally:
        await agent.__aexit__(None, None, None)
    await asyncio.sleep(0.2)
    assert "h2" in await _live(nc)


def _beats(name: str) -> Callable[[], Awaitable[Heartbeat]]:
    async def build() -> Heartbeat:
        now = time.time()
        return sample_load(
            agent=name, started_at=now, running=0, max_concurrency=1, tags=frozenset(),
            pools=frozenset(), groups=frozenset(), jobs_cached=0, synced_revision=0, connected_since=now,
        )  # fmt: skip

    return build


async def test_a_heartbeat_confirms_the_name_as_of_when_it_was_sent_not_when_its_ack_came(
    nc: Client, nats_server: EmbeddedServer
) -> None:
    """An agent frozen while a heartbeat was on its way reads the ack when it wakes: that write
    is as old as the freeze (the name may have expired and been taken since), so the gate, asked
    on waking, waits for a heartbeat sent after that before it lets the mirror schedule run."""
    js = nc.jetstream()
    await ensure_all(js)
    gate = NameGate(ttl=1.0, wait=5.0)
    publisher = HeartbeatPublisher(js, build=_beats("h3"), interval=60, gate=gate)
    await publisher.take_name()
    gate.set_connected(True)
    server = nats_server.pid
    assert server is not None
    os.kill(server, signal.SIGSTOP)  # the heartbeat's write waits in the stopped server
    try:
        sending = asyncio.create_task(publisher.run())  # one heartbeat now, then when the gate asks
        await asyncio.sleep(1.5)  # past the gate's TTL

        async def decide() -> tuple[bool, int]:  # the mirror schedule, on waking
            return await gate.ready(), publisher.sent  # how many heartbeats, when it decided

        deciding = asyncio.create_task(decide())
        await asyncio.sleep(0.2)
        assert not deciding.done(), "silent past the TTL: the gate waits for a heartbeat"
    finally:
        os.kill(server, signal.SIGCONT)
    try:
        async with asyncio.timeout(5):
            ready, sent = await deciding
        assert ready
        assert sent == 3, "the late ack of the heartbeat sent before did not open the gate"
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)


async def test_the_start_up_hold_ends_when_nats_is_not_there() -> None:
    """An agent's own schedules wait for its first heartbeat (a state dir whose name another
    agent holds must catch up nothing), but not when a connect attempt failed: started while
    NATS is down, it runs from its cache at once."""
    gate = NameGate(wait=30.0, hold_start=True)
    deciding = asyncio.create_task(gate.ready())
    await asyncio.sleep(0.1)
    assert not deciding.done(), "held until the first heartbeat"
    gate.unreachable()  # the agent's first connect attempt failed
    async with asyncio.timeout(1):
        assert await deciding
    async with asyncio.timeout(1):
        assert await gate.ready()
