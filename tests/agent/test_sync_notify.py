"""Sync reports pushed to notification targets: each full resync to a subject, a webhook and an
e-mail; a failure (NATS gone) once per outage, by webhook while NATS is down."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client

from agent.config import AgentConfig
from natsched.embedded import EmbeddedServer
from natsched.errors import ConfigError
from natsched.master.service import MasterService
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, toml_jobs
from tests.master.test_notify import smtp_sink, webhook  # noqa: F401 - fixtures

SUBJECT = "ops.sync-reports"


async def test_full_resyncs_and_a_failure_are_told_to_the_agents_targets(
    nats_server: EmbeddedServer,
    master: MasterService,
    nc: Client,
    start_agent: AgentFactory,
    webhook: tuple[str, list[dict[str, Any]]],  # noqa: F811 - the fixture
    smtp_sink: tuple[int, list[str]],  # noqa: F811 - the fixture
) -> None:
    url, posted = webhook
    port, mails = smtp_sink
    heard: list[dict[str, Any]] = []

    async def on_report(msg: Any) -> None:
        heard.append(json.loads(msg.data))

    await nc.subscribe(SUBJECT, cb=on_report)
    await nc.flush()
    spec = job("a", targets={"agents": ["r1"]}, triggers=[{"every": "1h"}])
    assert (await apply(nc, toml_jobs(spec, group="sn")))["ok"]
    agent = await start_agent(
        "r1",
        sync_notify=frozenset({SUBJECT, url, "ops@example.org"}),
        smtp_host="127.0.0.1",
        smtp_port=port,
    )

    async def first_told() -> bool:
        return bool(heard and posted and mails)

    await eventually(first_told, 15, "the first full resync told on every channel")
    assert heard[0]["agent"] == "r1" and heard[0]["kind"] == "full resync"
    assert heard[0]["changed"] == ["sn.a"] and heard[0]["count"] == 1
    assert posted[0] == heard[0]
    assert f"Subject: natsched: agent r1 full resync at revision {heard[0]['revision']}" in mails[0]

    # Live changes are in the sync report, not pushed; a full resync ("replicate now") is.
    spec_b = job("b", targets={"agents": ["r1"]}, triggers=[{"every": "1h"}])
    assert (await apply(nc, toml_jobs(spec, spec_b, group="sn")))["ok"]
    assert agent.sync is not None
    await agent.sync.resync(full=False, timeout=10)
    await agent.sync.resync(full=True, timeout=10)

    async def second_told() -> bool:
        return len(heard) == 2

    await eventually(second_told, 10, "the asked-for full resync told")
    assert heard[1]["kind"] == "full resync" and heard[1]["count"] == 2
    assert heard[1]["revision"] > heard[0]["revision"]

    nats_server.stop()
    try:

        async def failure_told() -> bool:
            return any(p["kind"] == "failure" for p in posted)

        await eventually(failure_told, 20, "the sync's failure told by webhook while NATS is down")
        # A failing session takes ~6 s here (a 5 s request timeout, 1 s pause): wait past a second.
        await asyncio.sleep(7)  # the sync keeps failing meanwhile: still one message
        failures = [p for p in posted if p["kind"] == "failure"]
        assert len(failures) == 1 and failures[0]["agent"] == "r1", failures
        assert "timeout" in failures[0]["error"].lower(), "the error itself, not its task group"
    finally:
        nats_server.start()


def test_a_bad_target_or_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sync_notify.*not a plain NATS subject"):
        AgentConfig.load(env={}, name="r1", sync_notify="ops.*")
    with pytest.raises(ConfigError, match="sync_notify_on: changes: use full, failure"):
        AgentConfig.load(env={}, name="r1", sync_notify="ops.x", sync_notify_on="changes")
    config = AgentConfig.load(env={"NATSCHED_AGENT_SYNC_NOTIFY": "ops.x, https://h/x, a@b.org"}, name="r1")
    assert sorted((t.subject, t.webhook, t.email) for t in config.sync_targets()) == [
        ("", "", "a@b.org"),
        ("", "https://h/x", ""),
        ("ops.x", "", ""),
    ]
