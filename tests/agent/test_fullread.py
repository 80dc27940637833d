"""A full resync's read (agent/fullread.py) on a real server: every key's newest message, in
order, through flow control; a gap, a stall and a message that is no delivery of its consumer
each end the read or are dropped, never slip into what was read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from agent.fullread import Delivery, GapError, read_last_per_subject

BUCKET = "readtest"
STREAM = f"KV_{BUCKET}"
FILTER = f"$KV.{BUCKET}.>"


@pytest.fixture
async def kv(nc: Client) -> KeyValue:
    return await nc.jetstream().create_key_value(bucket=BUCKET, history=1)


async def fill(nc: Client, keys: int, size: int) -> None:
    js = nc.jetstream()
    for start in range(0, keys, 500):
        await asyncio.gather(
            *(
                js.publish(f"$KV.{BUCKET}.k{i}", str(i).encode().ljust(size, b"."))
                for i in range(start, start + 500)
            )
        )


async def test_reads_the_newest_message_of_every_key_through_flow_control(nc: Client, kv: KeyValue) -> None:
    # 20 MB: far more than nats-server sends before it asks for a flow control answer.
    await fill(nc, 5000, 4000)
    await kv.put("k7", b"newer")
    await kv.delete("k8")
    read: list[tuple[str, int, bytes]] = []

    def take(msg: Msg, where: Delivery) -> None:
        read.append((msg.subject, where.stream_seq, msg.data[:5]))

    last = await asyncio.wait_for(read_last_per_subject(nc, STREAM, FILTER, take), 30)

    assert len(read) == 5000
    assert [seq for _, seq, _ in read] == sorted(seq for _, seq, _ in read)
    assert last == read[-1][1] == 5002
    newest = {subject: data for subject, _, data in read}
    assert newest[f"$KV.{BUCKET}.k7"] == b"newer"
    assert newest[f"$KV.{BUCKET}.k8"] == b""  # the delete marker is the key's newest message
    assert newest[f"$KV.{BUCKET}.k4999"].startswith(b"4999")
    consumers = await nc.jetstream().consumers_info(STREAM)
    assert consumers == []  # the read removes its consumer


async def test_an_empty_bucket_reads_nothing(nc: Client, kv: KeyValue) -> None:
    assert await asyncio.wait_for(read_last_per_subject(nc, STREAM, FILTER, lambda m, w: None), 10) == 0


async def test_a_message_that_is_no_delivery_of_the_consumer_is_dropped(
    nc: Client, kv: KeyValue, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(nc, 5000, 4000)  # a read long enough for the forged messages to arrive during it
    inboxes: list[str] = []
    new_inbox = nc.new_inbox

    def recorded_inbox() -> str:
        inboxes.append(new_inbox())
        return inboxes[-1]

    nc.new_inbox = recorded_inbox  # type: ignore[method-assign]
    read: list[str] = []
    forged: list[asyncio.Task[None]] = []

    async def forge() -> None:
        # (A client may not name a `$JS.ACK…` reply subject: nats-server refuses the publish.)
        await nc.publish(inboxes[0], b"forged", reply="_INBOX.not.a.delivery")
        await nc.publish(inboxes[0], b"forged")
        await nc.flush()

    def take(msg: Msg, where: Delivery) -> None:
        read.append(msg.data.decode())
        if len(read) == 1:
            forged.append(asyncio.create_task(forge()))

    await asyncio.wait_for(read_last_per_subject(nc, STREAM, FILTER, take), 30)
    await forged[0]
    assert len(read) == 5000
    assert not any(data.startswith("forged") for data in read)
    dropped = [r for r in caplog.records if "no delivery of its consumer" in r.getMessage()]
    assert len(dropped) == 2  # both arrived during the read


async def test_a_gap_in_the_consumer_sequence_fails_the_read(nc: Client, kv: KeyValue) -> None:
    await fill(nc, 3000, 100)
    subscribe = nc.subscribe

    async def losing_the_tenth(subject: str, **kwargs: Any) -> Any:
        """As if one message never reached the subscription."""
        deliver = kwargs.pop("cb")
        count = 0

        async def cb(msg: Msg) -> None:
            nonlocal count
            count += 1
            if count != 10:
                await deliver(msg)

        return await subscribe(subject, cb=cb, **kwargs)

    nc.subscribe = losing_the_tenth  # type: ignore[method-assign, assignment]
    read: list[int] = []

    with pytest.raises(GapError, match="expected message 10, got 11"):
        await asyncio.wait_for(
            read_last_per_subject(nc, STREAM, FILTER, lambda msg, where: read.append(where.stream_seq)), 30
        )
    assert len(read) == 9


async def test_a_read_that_stops_moving_fails_after_the_stall_time(nc: Client, kv: KeyValue) -> None:
    await fill(nc, 5000, 4000)
    publish = nc.publish
    unanswered: list[str] = []

    async def no_flow_control_answers(subject: str, payload: bytes = b"", **kwargs: object) -> None:
        if subject.startswith("$JS.FC."):
            unanswered.append(subject)  # nats-server stops sending until it hears one
            return
        await publish(subject, payload, **kwargs)  # type: ignore[arg-type]

    nc.publish = no_flow_control_answers  # type: ignore[method-assign, assignment]
    read: list[int] = []

    with pytest.raises(TimeoutError, match="stalled"):
        await asyncio.wait_for(
            read_last_per_subject(
                nc, STREAM, FILTER, lambda msg, where: read.append(where.stream_seq), stall=0.5
            ),
            30,
        )
    assert unanswered
    assert 0 < len(read) < 5000
