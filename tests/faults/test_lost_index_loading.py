"""A leader whose job index is still loading does not judge lost runs without their jobs.

The lost pass looks a lost run's job up in the master's job index to know whether to start it
again (``redispatch_lost``). A master that has just become leader (the only one, restarted)
starts its lost pass at once, while its index may still be reading the jobs bucket (100k
definitions took seconds): an agent found silent meanwhile had its load-balance run recorded
``lost`` and never started again, the job's own setting read as "no such job". Here the index's
first read is held back for a few seconds (as by many definitions) while the agent is silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.jobindex import JobIndex
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
INDEX_LOADING = 4.0  # seconds the restarted master's index takes to read the bucket


async def test_a_lost_run_found_while_the_index_loads_is_still_started_again(
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
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        await seen_by(first, "a1", "b1")
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "li")
        await eventually(lambda: recorded(nc, "li.long", run["run_id"], "started"), 10, "its started event")
    finally:
        await first.__aexit__(None, None, None)  # the only master stops (an upgrade, a restart)
    a1.kill()  # and the agent dies while it is down: its job with it (guardian)

    watch = JobIndex.watch

    async def slow_watch(index: JobIndex) -> None:
        await asyncio.sleep(INDEX_LOADING)
        await watch(index)

    monkeypatch.setattr(JobIndex, "watch", slow_watch)
    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=1.0) as second:
        assert second.index is not None
        await eventually(lambda: recorded(nc, "li.long", run["run_id"], "lost"), 20, "the run recorded lost")
        assert second.index.ready.is_set(), "judged lost before the master knew its job"
        await eventually(lambda: started_on(witness, "b1"), 15, "the lost run ran again on b1")
        await asyncio.sleep(1.0)  # a second re-run would have started by now
        redone = [e for e in await events_of(nc, "li.long") if e["trigger"] == RunTrigger.LOST.value]
    starts = started_agents(witness)
    assert starts == ["a1", "b1"], executions(witness)
    assert {e["agent"] for e in redone} == {"b1"}, redone
    assert {e["detail"]["lost_run"] for e in redone} == {run["run_id"]}, redone
