"""A fan-in whose master died as it was about to start the joined job starts it from the next.

The last upstream's completion completes the fan-in; its master dropped the fan-in's progress
(``fanin.<chain>.<job>``) and then claimed the dispatch. Killed in between, it left neither:
the redelivered completion started a new fan-in with only itself in it, which waited for the
other upstream (already handled) until its timeout failed the chain: the joined job never ran.
The window is milliseconds, so the first master "dies" (its connection closed, as by kill -9)
right where it would start the joined job.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.faults.witness import WITNESS_LINE, events_of, executions
from tests.helpers import apply, started_master, toml_jobs
from tests.master.test_chains import on, trigger

pytestmark = pytest.mark.faults


async def test_a_fan_in_completed_by_a_master_that_died_before_dispatching_runs_the_join(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    join = on("s1", "join", triggers=[{"after": ["quick", "slow"], "wait": "all", "timeout": "1m"}])
    join["command"] = ["sh", "-c", WITNESS_LINE.format(path=witness)]
    jobs = toml_jobs(
        on("s1", "root"),
        on("s1", "quick", triggers=[{"after": ["root"]}]),
        on("s1", "slow", 0.5, triggers=[{"after": ["root"]}]),
        join,
        group="fj",
    )
    first = await started_master(lambda: MasterService(conn))
    try:
        await start_agent("s1")
        assert (await apply(nc, jobs))["ok"]
        assert first.chains is not None
        fire, dead = first.chains._fire, asyncio.Event()

        async def dies_at_the_join(spec: Any, *args: Any, **kwargs: Any) -> None:
            if spec.key != "fj.join":
                return await fire(spec, *args, **kwargs)
            assert first.nc is not None
            await first.nc.close()  # as kill -9: nothing more written or sent
            dead.set()
            await asyncio.Event().wait()

        first.chains._fire = dies_at_the_join  # type: ignore[method-assign]
        await trigger(nc, "fj.root")
        async with asyncio.timeout(15):
            await dead.wait()
    finally:
        await first.__aexit__(None, None, None)
    async with MasterService(conn):  # gets slow's completion again (ack_wait)
        await eventually(lambda: _ran(witness), 15, "the joined job ran")
        await asyncio.sleep(1.0)  # a second run would have come by now
    assert len(executions(witness)) == 1, executions(witness)
    assert not [e for e in await events_of(nc, "fj.join") if e["state"] == "failed"]


async def _ran(witness: Path) -> bool:
    return bool(executions(witness))
