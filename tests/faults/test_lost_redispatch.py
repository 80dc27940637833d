"""A lost run whose leader died as it re-dispatched it is re-dispatched by the next leader.

The leader recorded an unresponsive agent's runs ``lost`` and then started them again
(``redispatch_lost``): killed in between (or with the dispatch raising on a NATS fault), the
runs were final, so the next leader found nothing open to start again: the re-run the job
asks for never came, and nothing said so. The window is milliseconds, so the first leader
"dies" (its connection closed, as by kill -9) right where it would re-dispatch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import Process, eventually
from tests.faults.witness import (
    executions,
    lost_job,
    pool_agent,
    recorded,
    run_on_a1,
    seen_by,
    start_lines,
    started_on,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults


async def test_a_lost_run_whose_leader_died_re_dispatching_it_runs_again_from_the_next(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_agent(spawn, url, tmp_path, "a1")
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0))
    try:
        pool_agent(spawn, url, tmp_path, "b1")
        await seen_by(first, "a1", "b1")
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "lr")
        await eventually(lambda: started_on(witness, "a1"), 10, "the run started on a1")
        # Its started event on record before a1 dies: killed a few ms after its job started, a1
        # took that event with it, and with the leader dying too nobody knew of the run (~1 in
        # 5 runs here). That is a double fault inside a few ms; this test's is the leader dying
        # while it re-dispatches a run everyone knows of.
        await eventually(lambda: recorded(nc, "lr.long", run["run_id"], "started"), 10, "its started event")
        assert first.dispatcher is not None
        dispatch, dead = first.dispatcher.dispatch, asyncio.Event()

        async def dies_re_dispatching(spec: Any, **kwargs: Any) -> list[Any]:
            if kwargs.get("trigger") is not RunTrigger.LOST:
                return await dispatch(spec, **kwargs)
            assert first.nc is not None
            await first.nc.close()  # as kill -9: nothing more written or sent
            dead.set()
            await asyncio.Event().wait()
            return []

        first.dispatcher.dispatch = dies_re_dispatching  # type: ignore[method-assign]
        a1.kill()  # its job dies with it (guardian); the leader finds it silent after 2 s
        async with asyncio.timeout(15):
            await dead.wait()
    finally:
        await first.__aexit__(None, None, None)
    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0):
        await eventually(lambda: started_on(witness, "b1"), 20, "the lost run ran again on b1")
        await asyncio.sleep(1.0)  # a second re-run would have started by now
    starts = start_lines(witness)
    assert [line[1] for line in starts] == ["a1", "b1"], executions(witness)
