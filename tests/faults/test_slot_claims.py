"""A slot whose cursor write went out while NATS was away is run (or recorded), never lost.

Found by ``bench.chaos`` (seed 101): nats-server killed 0.7 s before a slot. The leader
claimed the slot by advancing its cursor; nats-py buffered the write while reconnecting,
the request timed out (or the leader stepped down and its duties were cancelled), and the
write landed when the server came back. The next scheduler read that cursor and went on
from the slot after: the slot was claimed and nobody ran it, with nothing recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunState
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, every_second_tick, executed, executed_at_least, stream_events, toml_jobs

pytestmark = pytest.mark.faults


async def test_a_slot_claimed_while_nats_restarts_is_run_or_recorded(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    async with MasterService(conn, lease_ttl=2.0):
        await start_agent("s1")
        assert (await apply(nc, toml_jobs(every_second_tick(witness), group="sc")))["ok"]
        await eventually(executed_at_least(witness, 2), 15, "the job running every second")
        # Just after a slot: the next one is claimed (the lease is still fresh) into a dead connection.
        await asyncio.sleep(1.25 - time.time() % 1.0)
        nats_server.kill()
        await asyncio.sleep(7.0)  # past the 5 s request timeout of that cursor write
        nats_server.start()
        before = len(executed(witness))
        again = executed_at_least(witness, before + 4)
        await eventually(again, 30, "the job running again after the restart")
        assert (await api(nc, subjects.API_JOBS_DISABLE, {"jobs": ["sc.tick"]}))["ok"]
        await asyncio.sleep(1.5)  # the last dispatches' events land

    events = [e for e in await stream_events(nc) if e["job"] == "sc.tick"]
    slot_of = {e["run_id"]: e["scheduled_at"] for e in events if e.get("scheduled_at")}
    assert all(run_id in slot_of for run_id in executed(witness)), "every execution has its events"
    ran = [float(slot_of[run_id]) for run_id in executed(witness)]
    not_run = [RunState(e["state"]) for e in events]
    recorded = {
        e["scheduled_at"]
        for e, state in zip(events, not_run, strict=True)
        if state.failed or state is RunState.SKIPPED
    }
    slots = range(int(min(ran)), int(max(ran)) + 1)
    silent = [slot for slot in slots if float(slot) not in set(ran) | recorded]
    print(json.dumps({"executed": len(ran), "slots": len(slots), "silent": silent}))
    assert silent == [], "every slot ran or has a recorded outcome"
    assert len(ran) == len(set(ran)), "no slot ran twice"
