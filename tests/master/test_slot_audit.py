"""The slot audit's own record: a lost slot it could not publish is tried again, not dropped."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.events import RunEvent
from natsched.master import recording, slotaudit
from natsched.master.scheduler import KvCursors
from natsched.master.slotaudit import SlotAudit
from tests.conftest import eventually
from tests.helpers import stream_events


async def test_a_lost_record_that_could_not_be_published_is_tried_again(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    await ensure_all(js)
    state = await js.key_value(subjects.STATE_BUCKET)
    slot = float(int(time.time()))
    claim = {"slot": slot, "at": time.time(), "by": "x", "master": "m0", "trigger": "interval"}
    await state.put(subjects.cursor_key("g.a"), codec.pack(claim))  # claimed, never dispatched
    cursors = KvCursors(state, js=js, master_id="m1")
    assert await cursors.load("g.a") == slot
    publish = recording.publish_event
    tries: list[str] = []

    async def not_taken_at_first(js: JetStreamContext, event: RunEvent) -> bool:
        tries.append(event.run_id)
        return False if len(tries) == 1 else await publish(js, event)  # NATS away for RECORD_FOR

    monkeypatch.setattr(slotaudit, "publish_event", not_taken_at_first)
    audit = asyncio.create_task(SlotAudit(js, cursors, settle=0.1).run())
    try:

        async def recorded() -> bool:
            return any(e["scheduled_at"] == slot and e["state"] == "lost" for e in await stream_events(nc))

        await eventually(recorded, 10, "the lost slot recorded on a later pass")
    finally:
        audit.cancel()
    assert len(tries) == 2 and cursors.inherited == {}
