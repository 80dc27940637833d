"""Live updates for the browser: Server-Sent Events fed from NATS.

One subscription per web process on run events and heartbeat updates (``Hub``), fanned
out to every open page; a page too slow to keep up is dropped (its EventSource
reconnects and re-reads the page), so one stuck browser never holds memory or the hub.
A run's output is its chunks in ``NATSCHED_LOGS``, replayed, then followed until the run
ended and every chunk was sent (``follow_output``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from natsched import subjects
from natsched.errors import CodecError, NatschedError
from natsched.events import parse_event
from natsched.runs import get_run, run_started_at
from natsched.web.reads import event_json

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
KEEPALIVE = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
END_CHECK = 0.5


def sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class Hub:
    """Run events and agent heartbeats, from one NATS subscription each, to every listener."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._listeners: set[asyncio.Queue[bytes | None]] = set()
        self._finals: dict[str, set[asyncio.Event]] = {}
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        self._subs = [
            await self._nc.subscribe(subjects.EVENTS_SUBJECTS, cb=self._on_event),
            await self._nc.subscribe(subjects.kv_updates(subjects.AGENTS_BUCKET), cb=self._on_heartbeat),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        for queue in list(self._listeners):
            self._drop(queue)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data, msg.subject)
        except CodecError:
            return  # garbage on an event subject is not a run
        if event.state.final:
            for waiter in self._finals.get(event.run_id, ()):
                waiter.set()
        self._send(sse("run", event_json(event)))

    async def _on_heartbeat(self, msg: Msg) -> None:
        agent = msg.subject[len(subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)) :]
        self._send(sse("agent", {"agent": agent}))  # the name only: pages re-read what they show

    def _send(self, data: bytes) -> None:
        for queue in list(self._listeners):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                log.info("a browser fell %d updates behind; dropping its stream", QUEUE_SIZE)
                self._drop(queue)

    def _drop(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._listeners.discard(queue)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)
        if queue.full():  # make room for the end marker: the stream must learn it is over
            queue.get_nowait()
            queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
        self._listeners.add(queue)
        try:
            yield b": live\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if item is None:
                    return
                yield item
        finally:
            self._listeners.discard(queue)

    def watch_final(self, run_id: str) -> asyncio.Event:
        """An event set when ``run_id``'s final event arrives (``unwatch`` it when done)."""
        waiter = asyncio.Event()
        self._finals.setdefault(run_id, set()).add(waiter)
        return waiter

    def unwatch(self, run_id: str, waiter: asyncio.Event) -> None:
        waiters = self._finals.get(run_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._finals[run_id]


async def follow_output(nc: Client, hub: Hub, run_id: str) -> AsyncIterator[bytes]:
    """A run's output as SSE ``chunk`` events (base64: output is bytes), then ``end``."""
    ended = hub.watch_final(run_id)  # before reading the run: its end may come meanwhile
    try:
        try:
            summary = await get_run(nc.jetstream(), run_id)
        except NatschedError as exc:
            yield sse("failed", {"error": str(exc)})
            return
        if summary.latest.state.final:
            ended.set()
        chunks: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_chunk(msg: Msg) -> None:
            chunks.put_nowait(msg)

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=_utc(run_started_at(run_id) - 2.0),
        )
        sub = await nc.jetstream().subscribe(
            subjects.log_subject(summary.latest.agent, run_id),
            stream=subjects.LOGS_STREAM,
            cb=on_chunk,
            ordered_consumer=True,
            config=config,
        )
        try:
            async for item in _chunks(sub, chunks, ended):
                yield item
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        hub.unwatch(run_id, ended)


async def _chunks(
    sub: JetStreamContext.PushSubscription, chunks: asyncio.Queue[Msg], ended: asyncio.Event
) -> AsyncIterator[bytes]:
    while True:
        try:
            msg = await asyncio.wait_for(chunks.get(), END_CHECK)
        except TimeoutError:
            if ended.is_set() and chunks.empty() and await _caught_up(sub):
                yield sse("end", {})
                return
            yield b": waiting\n\n"  # also how a closed browser is noticed
            continue
        yield sse("chunk", {"data": base64.b64encode(msg.data).decode()})


async def _caught_up(sub: JetStreamContext.PushSubscription) -> bool:
    try:
        info = await sub.consumer_info()
    except Exception:  # noqa: BLE001 - the ordered consumer is being recreated: not yet
        return False
    return int(info.num_pending or 0) == 0


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
