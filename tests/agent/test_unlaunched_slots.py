"""A mirror slot whose cursor was committed but whose run was not yet launched when the agent
died (a window of milliseconds) is launched at the agent's next start, once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched.master.service import MasterService
from natsched.schedule import Due
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import eventually
from tests.helpers import apply, job, stream_events, toml_jobs


async def test_a_slot_taken_but_not_launched_before_the_agent_stopped_runs_at_its_next_start(
    master: MasterService, nc: Client, conn: ConnectionSettings, tmp_path: Path
) -> None:
    witness = tmp_path / "ran"
    config = AgentConfig(
        name="u1", state_dir=tmp_path / "u1", heartbeat_interval=0.5, sync_check_interval=0.5
    )
    # Once a year: no slot of its own falls in the test.
    yearly = job(
        "tick", command=["sh", "-c", f"echo $NATSCHED_RUN_ID >> {witness}"], triggers=[{"cron": "0 0 1 1 *"}]
    )
    slot = round(time.time()) - 5.0
    async with AgentService(config, conn) as agent:
        await agent.synced(10)
        assert (await apply(nc, toml_jobs(yearly, group="ul")))["ok"]
        assert agent.mirror is not None
        mirror = agent.mirror

        async def scheduled() -> bool:
            return "ul.tick" in mirror.core.schedule.jobs

        await eventually(scheduled, 10, "the job is scheduled on the agent")
        spec = mirror.core.schedule.jobs["ul.tick"]
        # What an agent killed -9 right after a tick's claim leaves behind: the cursor moved
        # past the slot (committed), and no run, no event.
        assert await mirror.cursors.claim([Due(spec, slot, RunTrigger.CRON)])
    assert not witness.exists()

    for start in (1, 2):  # the second start launches nothing more
        async with AgentService(config, conn) as agent:
            await agent.synced(10)
            if start == 1:
                await eventually(lambda: _started(nc, slot), 10, "the slot's run started")
            await asyncio.sleep(1.0)
    assert len(witness.read_text().splitlines()) == 1
    assert len([e for e in await stream_events(nc) if e["job"] == "ul.tick" and e["state"] == "started"]) == 1


async def _started(nc: Client, slot: float) -> bool:
    return any(
        e["job"] == "ul.tick" and e["state"] == "started" and e["scheduled_at"] == slot
        for e in await stream_events(nc)
    )
