"""Run events leave the agent through here, in order, without slowing runs down.

``publish`` only queues the event in memory; one publisher task sends queued events to
JetStream in pipelined batches (many publishes in flight, acks awaited together). An
event that does not get its ack, and every event after it, goes to a SQLite outbox
table that is drained in order once NATS answers again; nothing bypasses a non-empty
outbox. Duplicates cannot appear in the stream: every event carries
``Nats-Msg-Id = <run_id>.<state>``, so a retry whose first ack was lost is stored once.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import re
from collections.abc import Callable

import aiosqlite
from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched.events import MSG_ID_HEADER, RunEvent

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 2.0
RETRY_DELAY = 0.5
BATCH = 256
# Far above any subject natsched builds (names are at most 64 characters), far below
# nats-server's 4 KB max_control_line.
MAX_PUBLISH_NAME = 1024
_SPACE = re.compile(r"\s")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id  TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""

_Row = tuple[str, str, bytes]  # subject, msg id, payload


def _publishable(subject: str, msg_id: str) -> bool:
    """Could the server take this event? A subject or id over the limits (a row stored by an
    older version, before names were bounded) makes nats-server close the connection."""
    if all(len(text) <= MAX_PUBLISH_NAME and not _SPACE.search(text) for text in (subject, msg_id)):
        return True
    log.warning("dropping an event the server cannot take: %s… (%d bytes)", subject[:80], len(subject))
    return False


def _stored(ack: bytes) -> bool:
    """Did JetStream store the event? Its ack is ``{"stream":…,"seq":N}`` (also for a
    duplicate), an error ``{"error":{…}}``, or empty (a 503 status: no stream answered).
    Read without decoding it (two acks per run): no name in an ack can hold a quote."""
    return b'"seq":' in ack and b'"error"' not in ack


class _Batch:
    """The acks awaited for one pipelined batch of events."""

    def __init__(self, done: asyncio.Future[None], size: int) -> None:
        self.done = done
        self.tokens: dict[str, int] = {}  # reply token -> row index, until its ack came
        self._ok: list[bool | None] = [None] * size
        self._open = size

    def settle(self, index: int, ok: bool) -> None:
        if self._ok[index] is None:
            self._ok[index] = ok
            self._open -= 1
            if not self._open and not self.done.done():
                self.done.set_result(None)

    def cut(self, index: int) -> None:
        """Rows from ``index`` on were not sent: failed (and no ack will come for them)."""
        for rest in range(index, len(self._ok)):
            self.settle(rest, False)

    def acknowledged(self) -> int:
        """How many rows, from the first, JetStream stored."""
        for index, ok in enumerate(self._ok):
            if not ok:
                return index
        return len(self._ok)


class EventOutbox:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.on_event: Callable[[RunEvent], None] = lambda event: None  # e.g. a metrics counter
        self._db = db
        self._nc: Client | None = None
        self._memory: collections.deque[_Row] = collections.deque()
        self._stored = 0
        self._wake = asyncio.Event()
        self.published = 0
        self._acks: tuple[Client, str] | None = None  # the connection and its ack inbox
        self._batch: _Batch | None = None  # the batch whose acks are awaited now
        self._tokens = (str(n) for n in itertools.count())

    async def open(self) -> None:
        await self._db.executescript(_SCHEMA)
        await self._db.commit()
        async with self._db.execute("SELECT COUNT(*) FROM outbox") as cursor:
            row = await cursor.fetchone()
        self._stored = int(row[0]) if row else 0
        if self._stored:
            log.info("outbox holds %d event(s) from before; they go out once NATS answers", self._stored)
            self._wake.set()

    def attach(self, nc: Client) -> None:
        """NATS is there (or is back): send what waits."""
        self._nc = nc
        self._wake.set()

    @property
    def attached(self) -> bool:
        """Has this outbox had a connection (its agent served under its name)?"""
        return self._nc is not None

    @property
    def depth(self) -> int:
        """Events not yet acknowledged by JetStream (in memory or in the SQLite outbox)."""
        return self._stored + len(self._memory)

    async def publish(self, event: RunEvent, data: bytes | None = None) -> None:
        """Queue an event (``data``: its JSON, when the caller has it); the publisher task sends it."""
        self.on_event(event)
        self._memory.append((event.subject, event.msg_id, data or event.to_json()))
        self._wake.set()

    async def flush(self, timeout: float) -> None:
        """Send (or store) everything queued; for shutdown, after the publisher task stopped."""
        try:
            async with asyncio.timeout(timeout):
                await self._pump()
        except TimeoutError:
            await self._move_memory_to_store()

    async def deliver(self, timeout: float) -> bool:
        """Until JetStream acknowledged every event (True) or ``timeout`` (False, the rest kept
        in SQLite): sent again while NATS reconnects, for a stop after which this state dir may
        never run again (see ``AgentService.stop``). Like ``flush``, with the publisher stopped."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._pump()
                    if not self.depth:
                        return True
                    await asyncio.sleep(RETRY_DELAY)
        except TimeoutError:
            await self._move_memory_to_store()
            return False

    def _connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _send_batch(self, rows: list[_Row]) -> int:
        """Publish rows pipelined; return how many, from the start, were acknowledged.

        Each row is a core publish whose reply subject is one of our own (``<inbox>.<n>``);
        JetStream's ack comes back there. That is what ``js.publish`` does, minus what it
        costs per event (a task under gather, a request future, a timer, a PubAck object):
        ~70 us of the agent's CPU per event, two events per run.
        """
        if not self._connected():
            return 0
        assert self._nc is not None
        nc = self._nc
        try:
            inbox = await self._ack_inbox(nc)
        except Exception as exc:  # noqa: BLE001 - the connection went meanwhile: later
            log.debug("events not published yet: %r", exc)
            return 0
        batch = _Batch(asyncio.get_running_loop().create_future(), len(rows))
        self._batch = batch
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                for index, (subject, msg_id, payload) in enumerate(rows):
                    if not _publishable(subject, msg_id):
                        # Counted as sent (dropped): resent forever it would hold back every
                        # event queued behind it, and sending it would cost the connection.
                        batch.settle(index, True)
                        continue
                    token = next(self._tokens)
                    batch.tokens[token] = index
                    try:
                        await nc.publish(
                            subject, payload, reply=f"{inbox}.{token}", headers={MSG_ID_HEADER: msg_id}
                        )
                    except Exception as exc:  # noqa: BLE001 - closed, draining, buffer full: later
                        log.debug("event %s not published yet: %r", msg_id, exc)
                        batch.cut(index)
                        break
                await batch.done
        except TimeoutError:
            log.debug("events not acknowledged within %gs; resent later", PUBLISH_TIMEOUT)
        finally:
            self._batch = None
        return batch.acknowledged()

    async def _ack_inbox(self, nc: Client) -> str:
        """The inbox whose ``.<n>`` subjects receive our publishes' acks (one subscription)."""
        if self._acks is None or self._acks[0] is not nc:
            inbox = nc.new_inbox()
            await nc.subscribe(f"{inbox}.*", cb=self._on_ack)
            self._acks = (nc, inbox)
        return self._acks[1]

    async def _on_ack(self, msg: Msg) -> None:
        batch = self._batch
        if batch is None:
            return  # the ack of a batch given up on (timed out): its rows are resent
        index = batch.tokens.pop(msg.subject.rpartition(".")[2], None)
        if index is None:
            return
        ok = _stored(msg.data)
        if not ok:  # e.g. no stream answered (a 503 status, empty), or the stream's error
            log.debug("event not stored: %s", msg.data[:200] or msg.headers)
        batch.settle(index, ok)

    async def _move_memory_to_store(self) -> None:
        rows = list(self._memory)
        await self._store(rows)
        # Only what was stored leaves memory: events queued during the await stay, in order.
        for _ in rows:
            self._memory.popleft()

    async def _store(self, rows: list[_Row]) -> None:
        if not rows:
            return
        await self._db.executemany("INSERT INTO outbox (subject, msg_id, payload) VALUES (?, ?, ?)", rows)
        await self._db.commit()
        self._stored += len(rows)

    async def _drain_stored(self) -> bool:
        """Send the SQLite outbox in order; True once it is empty."""
        while self._stored:
            async with self._db.execute(
                "SELECT id, subject, msg_id, payload FROM outbox ORDER BY id LIMIT ?", (BATCH,)
            ) as cursor:
                rows = list(await cursor.fetchall())
            sent = await self._send_batch([(r[1], r[2], r[3]) for r in rows])
            if sent:
                await self._db.execute("DELETE FROM outbox WHERE id <= ?", (rows[sent - 1][0],))
                await self._db.commit()
                self._stored -= sent
                self.published += sent
            if sent < len(rows):
                return False
        return True

    async def _pump(self) -> None:
        drained = await self._drain_stored()
        while self._memory:
            # Peek, send, then drop: a cancellation in between loses nothing (a resend is deduplicated).
            batch = list(itertools.islice(self._memory, BATCH))
            sent = await self._send_batch(batch) if drained else 0
            for _ in range(sent):
                self._memory.popleft()
            self.published += sent
            if sent < len(batch):
                # Keep order: the unsent rest and everything queued behind it go to SQLite.
                await self._move_memory_to_store()
                drained = False

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._pump()
            if self._stored:
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()
