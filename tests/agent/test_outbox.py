"""The event outbox against a real server: every event stored once, in order, and an event
JetStream did not acknowledge (no stream to take it) kept until one does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
from nats.aio.client import Client

from agent.outbox import EventOutbox, _stored
from natsched import subjects
from natsched.buckets import ensure_all
from natsched.events import RunEvent, RunState
from natsched.vocab import RunTrigger
from tests.conftest import eventually
from tests.helpers import stream_events


def event(n: int) -> RunEvent:
    return RunEvent(
        run_id=f"18f0000000-{n:012x}",
        job="ob.j",
        agent="o1",
        state=RunState.STARTED,
        trigger=RunTrigger.MANUAL,
    )


async def test_events_are_stored_once_in_order_and_kept_while_no_stream_takes_them(
    nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await ensure_all(js)
    async with aiosqlite.connect(tmp_path / "outbox.sqlite") as db:
        outbox = EventOutbox(db)
        await outbox.open()
        outbox.attach(nc)
        publisher = asyncio.create_task(outbox.run())
        try:
            for n in range(300):  # several pipelined batches
                await outbox.publish(event(n))
            await eventually(lambda: _depth_is(outbox, 0), 10, "the events were acknowledged")
            assert [e["run_id"] for e in await stream_events(nc)] == [event(n).run_id for n in range(300)]

            config = (await js.stream_info(subjects.EVENTS_STREAM)).config
            await js.delete_stream(subjects.EVENTS_STREAM)  # nothing stores events now
            for n in range(300, 310):
                await outbox.publish(event(n))
            await asyncio.sleep(1.0)
            assert outbox.depth == 10, "an event nobody stored is not counted as published"
            await js.add_stream(config=config)
            await eventually(lambda: _depth_is(outbox, 0), 10, "the kept events went out")
            assert [e["run_id"] for e in await stream_events(nc)] == [
                event(n).run_id for n in range(300, 310)
            ]
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)


async def test_deliver_waits_within_its_bound_for_a_stream_to_take_the_events(
    nc: Client, tmp_path: Path
) -> None:
    """An agent whose name was taken over publishes its last records this way: one failed
    attempt is not the end (``flush`` stores the rest at once), the bound is."""
    js = nc.jetstream()
    await ensure_all(js)
    config = (await js.stream_info(subjects.EVENTS_STREAM)).config
    await js.delete_stream(subjects.EVENTS_STREAM)  # as while nats-server restarts: nobody stores
    async with aiosqlite.connect(tmp_path / "outbox.sqlite") as db:
        outbox = EventOutbox(db)
        await outbox.open()
        outbox.attach(nc)
        for n in range(5):
            await outbox.publish(event(n))
        assert not await outbox.deliver(0.5), "nothing stored the events within the bound"
        assert outbox.depth == 5, "the events not delivered are kept"
        delivering = asyncio.create_task(outbox.deliver(10))
        await asyncio.sleep(1.0)
        await js.add_stream(config=config)
        async with asyncio.timeout(15):
            assert await delivering, "delivered once a stream takes them"
        assert [e["run_id"] for e in await stream_events(nc)] == [event(n).run_id for n in range(5)]


async def _depth_is(outbox: EventOutbox, depth: int) -> bool:
    return outbox.depth == depth


def test_only_an_ack_with_a_sequence_and_no_error_counts_as_stored() -> None:
    # As nats-server 2.15 answers: stored, stored before (a resend), refused (the stream is
    # full, discard new), no stream at all (an empty 503 reply).
    assert _stored(b'{"stream":"NATSCHED_EVENTS","seq":1}')
    assert _stored(b'{"stream":"NATSCHED_EVENTS","seq":1,"duplicate": true}')
    refused = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},'
    assert not _stored(refused + b'"stream":"NATSCHED_EVENTS","seq":0}')
    assert not _stored(b"")
