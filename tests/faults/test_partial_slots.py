"""A slot a dead leader dispatched to some of its targets only is recorded for the others.

The slot audit took any event of a claimed slot as its trace. A slave slot goes to every
target: a leader that died after one target took the run and before it recorded another
target's failure (that agent was offline: nobody heard the request, so nobody else records
it) left a trace for the slot, and none for that target: silent there. Here the first leader
dies just as it would record the offline target's failure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from natsched import subjects
from natsched.master import dispatch, recording
from natsched.master.service import MasterService
from natsched.runmessages import RunReply, RunRequest
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, started_master, stream_events, toml_jobs

pytestmark = pytest.mark.faults
JOB = "ps.tick"


async def test_a_slot_sent_to_some_targets_by_a_leader_that_died_is_recorded_for_the_others(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    witness = tmp_path / "witness"
    await start_agent("s1", wait_synced=False)  # s2 is down: nobody listens on its subject
    record_failure = recording.record_failure
    dying: list[float] = []
    died = asyncio.Event()

    async def die_instead(
        js: JetStreamContext, request: RunRequest | None, reply: RunReply, *, undecided: str = ""
    ) -> None:
        if request is not None and not died.is_set():
            dying.append(float(request.scheduled_at or 0.0))
            died.set()
            await asyncio.sleep(3600)  # cut off before it records anything (see below)
        await record_failure(js, request, reply, undecided=undecided)

    monkeypatch.setattr(dispatch, "record_failure", die_instead)
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    try:
        both = job(
            "tick",
            mode="slave",
            targets={"agents": ["s1", "s2"]},
            command=["sh", "-c", f'echo "$NATSCHED_RUN_ID" >> {witness}'],
            triggers=[{"every": "1s"}],
            misfire="run-all",
            misfire_cap=300,
        )
        assert (await apply(nc, toml_jobs(both, group="ps")))["ok"]
        async with asyncio.timeout(10):
            await died.wait()
        assert first.nc is not None
        await first.nc.close()  # as kill -9: no lease released, nothing more sent
    finally:
        await first.__aexit__(None, None, None)
    [slot] = dying

    async with MasterService(conn, lease_ttl=2.0):

        async def recorded() -> bool:
            events = await stream_events(nc)
            return any(e["scheduled_at"] == slot and e["agent"] == "none" for e in events)

        await eventually(recorded, 20, "the slot recorded for the target the dead leader left out")
        assert (await api(nc, subjects.API_JOBS_DISABLE, {"jobs": [JOB]}))["ok"]

    events = [e for e in await stream_events(nc) if e["job"] == JOB and e["scheduled_at"] == slot]
    assert {e["agent"] for e in events if e["state"] == "started"} == {"s1"}, "s1 ran the slot"
    [record] = [e for e in events if e["agent"] == "none"]
    assert record["state"] == "lost" and "1 of its 2 targets" in record["reason"], record
