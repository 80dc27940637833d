"""Run events leave the agent through here: straight to JetStream when it answers, else
into a SQLite outbox that is drained in order once NATS is back.

Ordering holds because nothing bypasses a non-empty outbox. Duplicates cannot appear
in the stream: every event carries ``Nats-Msg-Id = <run_id>.<state>``, so a publish
whose ack was lost and is retried from the outbox is stored once.
"""

from __future__ import annotations

import asyncio
import logging

import aiosqlite
from nats.aio.client import Client

from natsched.events import MSG_ID_HEADER, RunEvent

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 2.0
RETRY_DELAY = 0.5
DRAIN_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id  TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class EventOutbox:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._nc: Client | None = None
        self._queued = 0
        self._wake = asyncio.Event()
        self.published = 0

    async def open(self) -> None:
        await self._db.executescript(_SCHEMA)
        await self._db.commit()
        async with self._db.execute("SELECT COUNT(*) FROM outbox") as cursor:
            row = await cursor.fetchone()
        self._queued = int(row[0]) if row else 0
        if self._queued:
            log.info("outbox holds %d event(s) from before; they go out once NATS answers", self._queued)

    def attach(self, nc: Client) -> None:
        """NATS is there (or will be again): start draining."""
        self._nc = nc
        self._wake.set()

    @property
    def depth(self) -> int:
        return self._queued

    async def publish(self, event: RunEvent) -> None:
        """Publish now if possible, else keep it for later. Never raises for NATS trouble."""
        payload = event.to_json()
        if self._queued == 0 and await self._send(event.subject, event.msg_id, payload):
            return
        await self._db.execute(
            "INSERT INTO outbox (subject, msg_id, payload) VALUES (?, ?, ?)",
            (event.subject, event.msg_id, payload),
        )
        await self._db.commit()
        self._queued += 1
        self._wake.set()

    async def _send(self, subject: str, msg_id: str, payload: bytes) -> bool:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.jetstream().publish(
                subject, payload, headers={MSG_ID_HEADER: msg_id}, timeout=PUBLISH_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - any NATS failure means: keep it in the outbox
            log.debug("event %s not published yet: %r", msg_id, exc)
            return False
        self.published += 1
        return True

    async def run(self) -> None:
        """Drain the outbox in order whenever there is something in it and NATS answers."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queued:
                async with self._db.execute(
                    "SELECT id, subject, msg_id, payload FROM outbox ORDER BY id LIMIT ?", (DRAIN_BATCH,)
                ) as cursor:
                    rows = list(await cursor.fetchall())
                sent = 0
                for row_id, subject, msg_id, payload in rows:
                    if not await self._send(subject, msg_id, payload):
                        break
                    await self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    sent += 1
                await self._db.commit()
                self._queued -= sent
                if sent < len(rows):
                    await asyncio.sleep(RETRY_DELAY)
