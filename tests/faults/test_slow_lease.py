"""A slot due while the leader's renewal is still out is claimed once NATS answers, not dropped.

The leader claims only with a fresh lease: a renewal older than the ttl (a freeze, NATS away)
stops its claims. But a renewal still out is not a lost lease: when nats-server restarted,
the leader's buffered renewal landed on its reconnect and it went on leading with the same
scheduler, which had meanwhile dropped the slots due in that gap (on every job due then) with
only a warning in its log: neither run, nor recorded, nor caught up by a next leader. Here
the lease's renewal is held back for longer than the ttl, then let through.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from natsched import subjects
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunState
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, every_second_tick, executed, executed_at_least, stream_events, toml_jobs

pytestmark = pytest.mark.faults
JOB = "sl.tick"
HELD_FOR = 3.0  # longer than the 2 s ttl: the lease is not fresh for ~1.7 s of it


class SlowRenewals(KeyValue):
    """The state bucket as the lease sees it: a renewal, once ``slow`` is set, is answered late."""

    def __init__(self, kv: KeyValue) -> None:
        self.__dict__.update(kv.__dict__)
        self.slow = False
        self.held_back = asyncio.Event()

    async def update(
        self, key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        if self.slow and key == subjects.LEASE_KEY:
            self.slow = False
            self.held_back.set()
            await asyncio.sleep(HELD_FOR)  # a reconnect away; the standby is away too
        return await super().update(key, value, last=last, validate_keys=validate_keys)


async def test_a_slot_due_while_the_renewal_is_out_is_run_once_it_lands(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    async with MasterService(conn, lease_ttl=2.0) as master:
        await start_agent("s1")
        assert (await apply(nc, toml_jobs(every_second_tick(witness), group="sl")))["ok"]
        await eventually(executed_at_least(witness, 2), 15, "the job running every second")
        assert master.lease is not None
        lease_kv = SlowRenewals(master.lease._kv)
        master.lease._kv = lease_kv
        lease_kv.slow = True
        async with asyncio.timeout(5):
            await lease_kv.held_back.wait()
        slow_from = time.time()
        await asyncio.sleep(HELD_FOR + 1.0)
        assert master.lease.held(), "the renewal landed: still the leader"
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
    assert silent == [], f"every slot ran or has a recorded outcome (renewal slow from {slow_from:.1f})"
    assert len(ran) == len(set(ran)), "no slot ran twice"
