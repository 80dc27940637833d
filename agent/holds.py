"""The agent's copy of calendars and pauses (see ``natsched/calendars.py``).

Watched from the settings bucket and saved in the cache (``meta.holds``, JSON of the raw
entries), so a mirror job honours its calendar and an agent pause while NATS is down,
and after a restart without NATS.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiosqlite
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from natsched import codec, subjects
from natsched.calendars import Holds
from natsched.errors import CodecError, SpecError

log = logging.getLogger(__name__)
META_KEY = "holds"
RETRY_DELAY = 1.0


def holds_from(entries: dict[str, Any]) -> Holds:
    holds = Holds()
    for key, value in entries.items():
        try:
            holds.apply(key, value)
        except (SpecError, TypeError, ValueError) as exc:
            log.warning("ignoring setting %s: %s", key, exc)
    return holds


class HoldsSync:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._entries: dict[str, Any] = {}
        self.holds = Holds()
        self.listeners: list[Any] = []  # called with the agent names whose pause was lifted
        self.on_entries: list[Any] = []  # called with every entry (e.g. group settings), after each change

    async def load(self) -> None:
        async with self._db.execute("SELECT value FROM meta WHERE name = ?", (META_KEY,)) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            try:
                self._entries = dict(json.loads(row[0]))
            except ValueError:
                self._entries = {}
        self.holds = holds_from(self._entries)
        for listener in self.on_entries:
            listener(self._entries)

    async def run(self, js: JetStreamContext) -> None:
        """Follow the settings bucket; start over (a full reload) after any failure."""
        while True:
            try:
                await self._follow(js)
            except BucketNotFoundError:
                log.info("no settings bucket yet (no master has run); checking again in %gs", RETRY_DELAY)
            except Exception as exc:  # noqa: BLE001 - NATS trouble: the saved copy keeps applying
                log.warning("settings watch failed (%r); restarting in %gs", exc, RETRY_DELAY)
            await asyncio.sleep(RETRY_DELAY)

    async def _follow(self, js: JetStreamContext) -> None:
        kv = await js.key_value(subjects.SETTINGS_BUCKET)
        watcher = await kv.watchall()
        fresh: dict[str, Any] = {}
        initial = True
        async for entry in watcher:
            if entry is None:  # initial contents delivered: replace the saved copy wholesale
                initial = False
                await self._save(fresh)
                continue
            target = fresh if initial else dict(self._entries)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                target.pop(entry.key, None)
            else:
                try:
                    value = codec.unpack(entry.value, entry.key)
                    value.pop(codec.VERSION_KEY, None)
                    target[entry.key] = value
                except CodecError as exc:
                    log.warning("ignoring setting %s: %s", entry.key, exc)
                    continue
            if not initial:
                await self._save(target)

    async def _save(self, entries: dict[str, Any]) -> None:
        lifted = set(self.holds.agent_pauses)
        self._entries = entries
        self.holds = holds_from(entries)
        lifted -= set(self.holds.agent_pauses)
        await self._db.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (META_KEY, json.dumps(entries))
        )
        await self._db.commit()
        for listener in self.on_entries:
            listener(entries)
        for listener in self.listeners:
            listener(lifted)
