"""A fan-in timeout whose master died as it recorded it is recorded by the next master.

The leader that found a fan-in past its deadline dropped the fan-in's progress, claimed the
chain run failed, then published the failure: killed in between, the chain's failure was
never recorded (and ``natsched runs --chain`` had nothing to say why the join never ran).
The window is milliseconds, so the first master "dies" (its connection closed, as by kill -9)
right where it would publish the failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.master.recording import publish_event
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.faults.witness import events_of
from tests.helpers import apply, started_master, toml_jobs
from tests.master.test_chains import on, trigger

pytestmark = pytest.mark.faults


async def test_a_fan_in_timeout_whose_master_died_recording_it_is_recorded_by_the_next(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = toml_jobs(
        on("s1", "root"),
        on("s1", "quick", triggers=[{"after": ["root"]}]),
        on("s1", "never", triggers=[{"after": ["root"]}], enabled=False),  # join waits in vain
        on("s1", "join", triggers=[{"after": ["quick", "never"], "wait": "all", "timeout": "1s"}]),
        group="ft",
    )
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        await start_agent("s1")
        assert (await apply(nc, jobs))["ok"]
        dead = asyncio.Event()

        async def dies_recording(js: Any, event: Any) -> bool:
            if event.job != "ft.join":
                return await publish_event(js, event)
            assert first.nc is not None
            await first.nc.close()  # as kill -9: nothing more written or sent
            dead.set()
            await asyncio.Event().wait()
            return False

        monkeypatch.setattr("natsched.master.chains.publish_event", dies_recording)
        await trigger(nc, "ft.root")
        async with asyncio.timeout(20):
            await dead.wait()
    finally:
        await first.__aexit__(None, None, None)
    monkeypatch.undo()
    async with MasterService(conn, lease_ttl=2.0):

        async def recorded() -> bool:
            return any(e["state"] == "failed" for e in await events_of(nc, "ft.join"))

        await eventually(recorded, 20, "the fan-in's timeout recorded")
        await asyncio.sleep(0.5)
    [failed] = await events_of(nc, "ft.join")
    assert failed["reason"].startswith("chain failed") and "never" in failed["reason"], failed
