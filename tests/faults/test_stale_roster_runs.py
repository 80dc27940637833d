"""A run that ended long ago is not taken for open because an agent's life on record named it.

The record of agent lives (``life.<agent>``) holds the first heartbeat a leader saw of each
life, with the runs that heartbeat listed as going on. A leader that judges a recorded life it
does not hear (the agent died while no master ran) took those for runs still going: one whose
events were older than the lost pass reads (24 h) was recorded ``lost`` and, for a
``redispatch_lost`` job, started again, long after it had succeeded. The look-back is made
1 s here, instead of waiting a day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master import openruns
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import (
    events_of,
    executions,
    lost_job,
    pool_pair,
    recorded,
    run_on_a1,
    seen_by,
    started_agents,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults


async def test_a_run_a_recorded_life_named_long_ago_is_not_started_again(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    spec = lost_job("short", witness, 6)
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        await seen_by(first, "a1", "b1")
        run = await run_on_a1(nc, spec, "sr")
    finally:
        await first.__aexit__(None, None, None)
    await (await nc.jetstream().key_value(subjects.STATE_BUCKET)).delete(subjects.agent_life_key("a1"))
    # The next leader first sees a1 while the run goes on: its first heartbeat names the run.
    second = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        assert second.dispatcher is not None
        directory = second.dispatcher.directory

        async def seen_running() -> bool:
            seen = directory.last_seen.get("a1")
            return seen is not None and run["run_id"] in seen[0].runs

        await eventually(seen_running, 10, "the leader sees a1 running the run")
        await eventually(lambda: _on_record(nc, "a1"), 10, "a1's life on record")
        await eventually(
            lambda: recorded(nc, "sr.short", run["run_id"], "succeeded"), 15, "the run succeeded"
        )
    finally:
        await second.__aexit__(None, None, None)  # no master runs now
    a1.kill()  # a1 dies meanwhile, its heartbeat expires
    await (await nc.jetstream().key_value(subjects.AGENTS_BUCKET)).delete("a1")
    await asyncio.sleep(2.5)
    monkeypatch.setattr(openruns, "LOOKBACK", 1.0)  # the run ended "more than a day ago"
    monkeypatch.setattr(openruns, "SLACK", 0.5)

    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=1.0):
        await eventually(lambda: _off_record(nc, "a1"), 15, "a1 judged lost (its life off the record)")
        await asyncio.sleep(1.5)  # a re-run would have started on b1 by now
        states = [e["state"] for e in await events_of(nc, "sr.short") if e["run_id"] == run["run_id"]]
    starts = started_agents(witness)
    assert starts == ["a1"], executions(witness)
    assert "lost" not in states, states


async def _on_record(nc: Client, agent: str) -> bool:
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    try:
        await state.get(subjects.agent_life_key(agent))
    except KeyNotFoundError:
        return False
    return True


async def _off_record(nc: Client, agent: str) -> bool:
    return not await _on_record(nc, agent)
