"""A failure the master records itself is recorded also when the event store refuses for a while.

Found by ``bench.chaos --cluster`` (seed 444): a slave slot dispatched while the events
stream had no leader (a node was restarting); the agents could not claim the runs, the
master's ``failed`` events timed out, and the slot vanished with nothing recorded. Here the
store refuses by configuration (discard new at its current size) instead of an election,
so the test is deterministic; the master must keep trying (the event id de-duplicates).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from natsched import subjects
from natsched.master.service import MasterService
from tests.conftest import eventually
from tests.helpers import apply, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults


async def test_an_offline_failure_is_recorded_once_the_event_store_takes_it_again(
    master: MasterService, nc: Client
) -> None:
    spec = job("work", mode="slave", targets={"agents": ["ghost"]}, command=["true"])
    assert (await apply(nc, toml_jobs(spec, group="rf")))["ok"]
    js = nc.jetstream()
    await js.publish(subjects.event_subject("ghost", "rf.other", "queued"), b"{}")  # not empty
    info = await js.stream_info(subjects.EVENTS_STREAM)
    full = replace(info.config, discard=DiscardPolicy.NEW, max_msgs=info.state.messages)
    await js.update_stream(full)

    async def back_in(seconds: float) -> None:
        await asyncio.sleep(seconds)  # the first attempts to record it are refused
        await js.update_stream(info.config)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(back_in(2.0))
            reply = json.loads((await nc.request("natsched.trigger.rf.work", b"{}", timeout=25)).data)
    finally:
        await js.update_stream(info.config)
    [run] = reply["runs"]
    assert not run["ok"] and run["reason"] == "agent offline", reply

    async def recorded() -> bool:
        return any(e.get("run_id") == run["run_id"] for e in await stream_events(nc))

    await eventually(recorded, 15, "the run's failed event in the stream")
    events = [e for e in await stream_events(nc) if e.get("run_id") == run["run_id"]]
    assert [(e["state"], e["reason"]) for e in events] == [("failed", "agent offline")], events
