"""Reading a stream (or a KV bucket's current values) to its end, fast.

``kv.keys()`` + ``kv.get()`` costs a round trip per key; an ordered consumer with
``LAST_PER_SUBJECT`` streams a whole bucket in one go (~0.14 s for 10k keys here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from natsched import subjects
from natsched.buckets import is_delete

SCAN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class KvValue:
    key: str
    revision: int
    value: bytes


async def read_stream(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    since: float | None = None,
    from_seq: int | None = None,
    last_per_subject: bool = False,
    timeout: float = SCAN_TIMEOUT,
) -> AsyncIterator[Msg]:
    """Every message of ``stream`` on ``subject`` as it is now (from ``since``), then stop."""
    if last_per_subject:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
    elif from_seq is not None:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq
        )
    elif since is not None:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=datetime.fromtimestamp(since, UTC)
        )
    else:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        queue.put_nowait(msg)

    sub = await js.subscribe(subject, stream=stream, cb=enqueue, ordered_consumer=True, config=config)
    try:
        # Nothing matched: the server delivered nothing and has nothing pending. (The client's
        # own count is no proof: messages may be on their way to the callback.)
        info = await sub.consumer_info()
        if info.num_pending == 0 and (info.delivered is None or info.delivered.consumer_seq == 0):
            return
        async with asyncio.timeout(timeout):
            while True:
                msg = await queue.get()
                yield msg
                if msg.metadata.num_pending == 0:
                    return
    finally:
        await sub.unsubscribe()


async def scan(
    js: JetStreamContext, bucket: str, key_filter: str = ">", timeout: float = SCAN_TIMEOUT
) -> dict[str, KvValue]:
    """Every live key under ``key_filter`` (e.g. ``"backup.>"``) with its value and revision."""
    prefix = subjects.kv_subject_prefix(bucket)
    result: dict[str, KvValue] = {}
    async for msg in read_stream(
        js, subjects.kv_stream(bucket), prefix + key_filter, last_per_subject=True, timeout=timeout
    ):
        key = msg.subject[len(prefix) :]
        if is_delete(msg.headers):
            result.pop(key, None)
        else:
            result[key] = KvValue(key, msg.metadata.sequence.stream, msg.data)
    return result
