"""A slot claim that lands after the next leader read the cursors is recorded, not silent.

A leader's cursor write for slot S can sit in nats-py's buffer while nats-server restarts and
land only when that leader reconnects, after a standby (which reconnected first) took over and
read every cursor. The new leader's own claim of S then meets a wrong last sequence, finds S
claimed and leaves it to its claimer; the claimer, whose request had timed out, asks again,
finds the cursor moved on by the new leader and concludes that its write did not land. Nobody
dispatches S, and the new leader's slot audit knew only the cursors as it first read them:
S vanished without a record, on every target of every job claimed in that step (the shape of a
bench.chaos report: one slot missed on all three slave targets and the load-balance job).

The window (between the new leader's read of the cursors and its first claim) is
milliseconds wide, so here the late write is made exactly there: the test wraps the cursor
scan of the second leader and lands the first leader's claim right after it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from natsched import codec, kvscan, subjects
from natsched.kvscan import KvValue
from natsched.master import scheduler as scheduler_module
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import (
    api,
    apply,
    every_second_tick,
    executed,
    executed_at_least,
    started_master,
    stream_events,
    toml_jobs,
)

pytestmark = pytest.mark.faults
JOB = "lc.tick"


async def _first_leader_runs_then_dies(conn: ConnectionSettings, nc: Client, witness: Path) -> str:
    """A leader fires the every-second job a few times, then is cut off as by kill -9: its id."""
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        assert (await apply(nc, toml_jobs(every_second_tick(witness), group="lc")))["ok"]
        await eventually(executed_at_least(witness, 2), 15, "the job running every second")
        assert first.nc is not None
        await first.nc.close()  # as kill -9: no lease released, nothing more sent
    finally:
        await first.__aexit__(None, None, None)
    return first.master_id


async def test_a_claim_landing_after_the_next_leader_read_the_cursors_is_recorded(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    witness = tmp_path / "witness"
    await start_agent("s1", wait_synced=False)  # no master yet
    first_id = await _first_leader_runs_then_dies(conn, nc, witness)
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    late: list[float] = []
    real_scan = kvscan.scan

    async def scan_then_late_claim(
        js: JetStreamContext, bucket: str, key_filter: str = ">"
    ) -> dict[str, KvValue]:
        """The second leader's first read of the cursors; right after it, the first leader's
        buffered claim of the job's next slot lands (as on its reconnect)."""
        read: dict[str, KvValue] = await real_scan(js, bucket, key_filter)
        if not late and key_filter == subjects.cursor_key("") + ">":
            cursor = read[subjects.cursor_key(JOB)]
            slot = float(codec.unpack(cursor.value, "cursor")["slot"]) + 1.0
            claim = {"slot": slot, "at": time.time(), "by": "late", "master": first_id, "trigger": "interval"}
            await state.update(subjects.cursor_key(JOB), codec.pack(claim), last=cursor.revision)
            late.append(slot)
        return read

    monkeypatch.setattr(scheduler_module, "scan", scan_then_late_claim)
    async with MasterService(conn, lease_ttl=2.0):

        async def going_on() -> bool:
            events = await stream_events(nc) if late else []
            return any(e["scheduled_at"] == late[0] + 1 and e["state"] == "succeeded" for e in events)

        await eventually(going_on, 15, "the second leader firing the slots after the late claim")

        async def recorded() -> bool:
            return any(e["scheduled_at"] == late[0] for e in await stream_events(nc) if e["job"] == JOB)

        await eventually(recorded, 15, "the late-claimed slot recorded by the second leader")
        assert (await api(nc, subjects.API_JOBS_DISABLE, {"jobs": [JOB]}))["ok"]
        await asyncio.sleep(1.0)

    events = [e for e in await stream_events(nc) if e["job"] == JOB]
    [record] = [e for e in events if e["scheduled_at"] == late[0]]
    assert record["state"] == "lost" and "claimed it" in record["reason"], record
    ran = [e["scheduled_at"] for e in events if e["state"] == "succeeded"]
    run_ids = executed(witness)
    assert len(run_ids) == len(set(run_ids)) == len(ran) == len(set(ran)), "each slot executed once"
