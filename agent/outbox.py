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


class EventOutbox:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.on_event: Callable[[RunEvent], None] = lambda event: None  # e.g. a metrics counter
        self._db = db
        self._nc: Client | None = None
        self._memory: collections.deque[_Row] = collections.deque()
        self._stored = 0
        self._wake = asyncio.Event()
        self.published = 0

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

    def _connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _send_batch(self, rows: list[_Row]) -> int:
        """Publish rows pipelined; return how many, from the start, were acknowledged."""
        if not self._connected():
            return 0
        assert self._nc is not None
        js = self._nc.jetstream()
        # An unpublishable row counts as sent (dropped): resending it forever would hold back
        # every event queued behind it, and sending it would cost the connection.
        keep = [_publishable(subject, msg_id) for subject, msg_id, _ in rows]
        sent = iter(
            await asyncio.gather(
                *(
                    js.publish(s, p, headers={MSG_ID_HEADER: m}, timeout=PUBLISH_TIMEOUT)
                    for (s, m, p), ok in zip(rows, keep, strict=True)
                    if ok
                ),
                return_exceptions=True,
            )
        )
        results = [next(sent) if ok else None for ok in keep]
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                log.debug("event %s not published yet: %r", rows[index][1], result)
                return index
        return len(rows)

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
