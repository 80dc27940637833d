"""A lost run of a restarted agent is started again when its job says so.

An agent killed -9 and started again records the run it had going ``lost`` itself (its journal,
agent/recovery.py) within a second, before the leader's own close of its previous life (5 s
after it saw the new life): the leader then found the run closed and did not start it again,
although the job has ``redispatch_lost = true`` (the README promised it). Also when no master
watched the restart: the leader that starts later knows the previous life from the record of
agent lives (``life.<agent>``), not from a heartbeat of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import Process, eventually
from tests.faults.witness import (
    events_of,
    executions,
    lost_job,
    pool_agent,
    pool_pair,
    recorded,
    run_on_a1,
    seen_by,
    started_agents,
    started_on,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("watched", [True, False], ids=["leader-watching", "no-master-meanwhile"])
async def test_a_run_its_restarted_agent_recorded_lost_runs_again_once(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
    watched: bool,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    # Not silent long enough to be lost: the leader sees a restart, not a dead agent.
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=5.0))
    try:
        await seen_by(first, "a1", "b1")
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "rr")
        await eventually(lambda: recorded(nc, "rr.long", run["run_id"], "started"), 10, "its started event")
        await asyncio.sleep(1.0)  # the leader records a1's life (its passes are 0.5 s apart)
        if not watched:
            await first.__aexit__(None, None, None)
        a1.kill()
        pool_agent(spawn, url, tmp_path, "a1")
        await eventually(
            lambda: recorded(nc, "rr.long", run["run_id"], "lost"), 15, "a1 recorded its run lost"
        )
        if not watched:
            first = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=5.0))
        await eventually(lambda: started_on(witness, "b1"), 20, "the lost run ran again on b1")
        await asyncio.sleep(1.0)  # a second re-run would have started by now
        redone = [e for e in await events_of(nc, "rr.long") if e["trigger"] == RunTrigger.LOST.value]
    finally:
        await first.__aexit__(None, None, None)
    starts = started_agents(witness)
    assert starts == ["a1", "b1"], executions(witness)
    assert {(e["agent"], e["detail"]["lost_run"]) for e in redone} == {("b1", run["run_id"])}, redone
