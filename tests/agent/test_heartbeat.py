"""The agent's heartbeat on a real server: a clean stop withdraws it at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import subjects
from natsched.kvscan import scan
from natsched.master.service import MasterService
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
