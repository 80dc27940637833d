"""A claimed slot whose dispatch fails with an error is recorded, not silent.

Once the leader won a slot's cursor, nobody else will run it, and the slot audit checks only
the claims of other schedulers. A dispatch that raised (the live agents read from the bucket
while the directory's watch is not ready and NATS does not answer; a request refused by a
closing client) ended its task with an error in the log and nothing on record: the slot
vanished on every target. Here the read of the live agents fails once, as with NATS away.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.master.service import MasterService
from natsched.models import Heartbeat
from natsched.settings import ConnectionSettings
from natsched.vocab import RunState
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, every_second_tick, executed, executed_at_least, stream_events, toml_jobs

pytestmark = pytest.mark.faults
JOB = "us.tick"


async def test_a_claimed_slot_whose_dispatch_fails_is_recorded(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    async with MasterService(conn, lease_ttl=2.0) as master:
        await start_agent("s1")
        assert (await apply(nc, toml_jobs(every_second_tick(witness), group="us")))["ok"]
        await eventually(executed_at_least(witness, 2), 15, "the job running every second")
        assert master.dispatcher is not None
        live_agents = master.dispatcher.live_agents
        broken = asyncio.Event()

        async def broken_once() -> list[Heartbeat]:
            if not broken.is_set():
                broken.set()
                raise TimeoutError("the agents bucket did not answer")  # as a scan with NATS away
            return await live_agents()

        master.dispatcher.live_agents = broken_once  # type: ignore[method-assign]
        async with asyncio.timeout(5):
            await broken.wait()
        before = len(executed(witness))
        await eventually(executed_at_least(witness, before + 2), 15, "the job running on")
        assert (await api(nc, subjects.API_JOBS_DISABLE, {"jobs": [JOB]}))["ok"]
        await asyncio.sleep(1.5)  # the last dispatches' events land

    events = [e for e in await stream_events(nc) if e["job"] == JOB]
    slot_of = {e["run_id"]: e["scheduled_at"] for e in events if e.get("scheduled_at")}
    ran = [float(slot_of[run_id]) for run_id in executed(witness)]
    recorded = {e["scheduled_at"] for e in events if RunState(e["state"]).failed}
    slots = range(int(min(ran)), int(max(ran)) + 1)
    silent = [slot for slot in slots if float(slot) not in set(ran) | recorded]
    assert silent == [], "every slot ran or has a recorded outcome"
    [failed] = [e for e in events if e["state"] == "failed"]
    assert failed["agent"] == "none" and "did not answer" in failed["reason"], failed
    assert len(ran) == len(set(ran)), "no slot ran twice"
