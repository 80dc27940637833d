"""An agent that died while no master ran is still found lost by the next one.

The lost pass judges the agents a master has seen heartbeating. An agent that died while the
only master was down (an upgrade, a host reboot) and whose heartbeat expired from the bucket
(TTL 15 s) before the master came back was never seen by it: its open runs stayed open forever
and a ``redispatch_lost`` job's run never ran again. Masters now keep a roster of the agent
lives they saw in ``natsched_state``; a leader judges those it does not hear as well. The
heartbeat's expiry is made at once here (the key deleted) instead of waiting 15 s.
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
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
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
    started_on,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults


async def test_an_agent_that_died_and_expired_while_no_master_ran_has_its_runs_closed(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        await seen_by(first, "a1", "b1")
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "nm")
        await eventually(lambda: recorded(nc, "nm.long", run["run_id"], "started"), 10, "its started event")
        await eventually(lambda: _on_record(nc, "a1"), 10, "a1's life on record")  # up to 0.5 s
    finally:
        await first.__aexit__(None, None, None)  # the only master stops
    a1.kill()  # the agent dies meanwhile, its job with it (guardian)
    await (await nc.jetstream().key_value(subjects.AGENTS_BUCKET)).delete("a1")  # as expired

    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=1.0):
        await eventually(lambda: recorded(nc, "nm.long", run["run_id"], "lost"), 15, "the run recorded lost")
        await eventually(lambda: started_on(witness, "b1"), 15, "the lost run ran again on b1")
        await asyncio.sleep(1.0)  # a second re-run would have started by now
        redone = [e for e in await events_of(nc, "nm.long") if e["trigger"] == RunTrigger.LOST.value]
    starts = started_agents(witness)
    assert starts == ["a1", "b1"], executions(witness)
    assert {(e["agent"], e["detail"]["lost_run"]) for e in redone} == {("b1", run["run_id"])}, redone


async def _on_record(nc: Client, agent: str) -> bool:
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    try:
        await state.get(subjects.agent_life_key(agent))
    except KeyNotFoundError:
        return False
    return True
