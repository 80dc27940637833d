"""A queued run of a paused job whose leader died as it released it runs from the next leader.

On resume the leader took each held run (``held.<group>.<job>.<id>``) by deleting it, then
dispatched it: a leader killed in between left no key and no run, and nothing said so. The
window is milliseconds, so the first leader "dies" (its connection closed, as by kill -9)
right where it would dispatch the released run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.faults.witness import WITNESS_LINE, executions
from tests.helpers import api, apply, started_master, toml_jobs
from tests.master.test_chains import on, trigger
from tests.master.test_held_runs import held

pytestmark = pytest.mark.faults


async def test_a_held_run_released_by_a_leader_that_died_before_dispatching_it_runs(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    down = on("h1", "down", triggers=[{"after": ["up"]}])
    down["command"] = ["sh", "-c", WITNESS_LINE.format(path=witness)]
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        await start_agent("h1")
        assert (await apply(nc, toml_jobs(on("h1", "up"), down, group="hd")))["ok"]
        assert (await api(nc, subjects.API_PAUSE, {"job": "hd.down", "mode": "queue"}))["ok"]
        await trigger(nc, "hd.up")

        async def one_held() -> bool:
            return await held(nc) == 1

        await eventually(one_held, 10, "down held while paused")
        assert first.holding is not None
        dead = asyncio.Event()

        async def dies_before_dispatching(*args: Any, **kwargs: Any) -> list[Any]:
            assert first.nc is not None
            await first.nc.close()  # as kill -9: nothing more written or sent
            dead.set()
            await asyncio.Event().wait()
            return []

        first.holding._dispatch = dies_before_dispatching  # type: ignore[method-assign]
        assert (await api(nc, subjects.API_RESUME, {"job": "hd.down"}))["ok"]
        async with asyncio.timeout(10):
            await dead.wait()
    finally:
        await first.__aexit__(None, None, None)
    async with MasterService(conn, lease_ttl=2.0):  # leads once the dead leader's lease ran out
        await eventually(lambda: _ran(witness), 15, "the held run ran")
        await asyncio.sleep(1.0)  # a second run would have come by now
        assert await held(nc) == 0
    assert len(executions(witness)) == 1, executions(witness)


async def _ran(witness: Path) -> bool:
    return bool(executions(witness))
