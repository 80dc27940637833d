"""Per-role NATS permissions on a real server: each role can do its job and nothing more."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import security, subjects
from natsched.embedded import EmbeddedServer, free_port
from natsched.kvscan import scan
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import eventually
from tests.helpers import job, stream_events, toml_jobs

# Each role reads replies on its own inbox prefix only (the trigger user configures it).
INBOX = {
    "master": subjects.MASTER_INBOX,
    "admin": subjects.ADMIN_INBOX,
    "a1": subjects.agent_inbox("a1"),
    "bot": subjects.TRIGGER_INBOX,
}
USERS = {
    "master": ("m-secret", security.master()),
    "admin": ("a-secret", security.admin()),
    "a1": ("agent-secret", security.agent("a1", pools=["p"])),
    "bot": ("t-secret", security.trigger(["perm.hello"])),
}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(
        data_dir=tmp_path / "nats",
        port=free_port(),
        log_file=tmp_path / "nats.log",
        extra_config=security.users_block(USERS),
    )
    server.start()
    yield server
    server.stop()


def settings(server: EmbeddedServer, user: str) -> ConnectionSettings:
    return ConnectionSettings(url=server.url, user=user, password=USERS[user][0], connect_timeout=2)


async def connect_as(server: EmbeddedServer, user: str, errors: list[str] | None = None) -> Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    return await nats.connect(
        server.url,
        user=user,
        password=USERS[user][0],
        error_cb=on_error,
        max_reconnect_attempts=1,
        inbox_prefix=INBOX[user],
    )


async def request_json(nc: Client, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=10)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def test_each_role_works_within_its_permissions(secured: EmbeddedServer, tmp_path: Path) -> None:
    async with (
        MasterService(settings(secured, "master")),
        AgentService(
            AgentConfig(name="a1", pools=frozenset({"p"}), state_dir=tmp_path / "a1", heartbeat_interval=0.5),
            settings(secured, "a1"),
        ) as agent,
    ):
        await agent.synced(10)
        admin = await connect_as(secured, "admin")
        master_nc = await connect_as(secured, "master")
        reply = await request_json(
            admin,
            subjects.API_APPLY,
            {
                "source": "perm.toml",
                "content": toml_jobs(
                    job("hello", mode="slave", targets={"agents": ["a1"]}, command=["echo", "hi"]),
                    job("other", mode="slave", targets={"agents": ["a1"]}),
                    group="perm",
                ),
            },
        )
        assert reply["ok"], reply
        await eventually(lambda: _cached(agent, 2), 10, "the agent synced under its own credential")

        # The trigger role starts its job...
        bot_errors: list[str] = []
        bot = await connect_as(secured, "bot", bot_errors)
        started = await request_json(bot, "natsched.trigger.perm.hello", {})
        assert started["ok"] and started["runs"][0]["agent"] == "a1"

        async def succeeded() -> bool:
            return any(
                e["job"] == "perm.hello" and e["state"] == "succeeded" for e in await stream_events(master_nc)
            )

        await eventually(succeeded, 10, "the agent published its events under its own credential")
        heartbeats = await scan(master_nc.jetstream(), subjects.AGENTS_BUCKET)
        assert "a1" in heartbeats

        # ...but no other job, and it cannot read events.
        with pytest.raises(nats.errors.TimeoutError):
            await bot.request("natsched.trigger.perm.other", b"{}", timeout=1)
        seen: list[bytes] = []

        async def collect(msg: Any) -> None:
            seen.append(msg.data)

        await bot.subscribe(subjects.EVENTS_SUBJECTS, cb=collect)
        await request_json(admin, "natsched.trigger.perm.hello", {})
        await asyncio.sleep(1.0)
        assert seen == []
        assert any(
            "permissions violation for subscription" in e.lower() and "natsched.event" in e
            for e in bot_errors
        )
        other_runs = [e for e in await stream_events(master_nc) if e["job"] == "perm.other"]
        assert other_runs == []

        # The agent's credential cannot write job definitions.
        rogue = await connect_as(secured, "a1")
        kv = await rogue.jetstream().key_value(subjects.JOBS_BUCKET)
        with pytest.raises(Exception):  # noqa: B017 - denied publish: no ack ever comes
            await kv.put("perm.evil", b"x")
        assert "perm.evil" not in await scan(master_nc.jetstream(), subjects.JOBS_BUCKET)
        for nc in (admin, master_nc, bot, rogue):
            await nc.close()


async def _cached(agent: AgentService, n: int) -> bool:
    return await agent.cache.count() == n


async def test_an_agent_writes_only_its_own_run_claims_and_cannot_roll_the_bucket_up(
    secured: EmbeddedServer,
) -> None:
    async with MasterService(settings(secured, "master")) as master:
        assert master.nc is not None
        claims = await master.nc.jetstream().key_value(subjects.CLAIMS_BUCKET)
        await claims.create(subjects.agent_claim_key("a2", "r0"), b"a2's claim")
        a1 = await connect_as(secured, "a1")
        kv = await a1.jetstream().key_value(subjects.CLAIMS_BUCKET)
        await kv.create(subjects.agent_claim_key("a1", "r1"), b"mine")
        await kv.create(subjects.pool_claim_key("p", "r2"), b"my pool's")
        for key in (subjects.agent_claim_key("a2", "r3"), subjects.pool_claim_key("q", "r4")):
            with pytest.raises(Exception):  # noqa: B017 - denied publish: no ack ever comes
                await asyncio.wait_for(kv.create(key, b"forged"), 1.5)
        # One message with a rollup header on its own key would otherwise wipe every claim.
        with pytest.raises(nats.js.errors.APIError, match="rollup"):
            await a1.jetstream().publish(
                subjects.kv_subject_prefix(subjects.CLAIMS_BUCKET) + subjects.agent_claim_key("a1", "r5"),
                b"wipe",
                headers={"Nats-Rollup": "all"},
            )
        held = await scan(master.nc.jetstream(), subjects.CLAIMS_BUCKET)
        assert sorted(held) == sorted(
            [
                subjects.agent_claim_key("a2", "r0"),
                subjects.agent_claim_key("a1", "r1"),
                subjects.pool_claim_key("p", "r2"),
            ]
        )
        await a1.close()
