"""The chains bucket's records (claims, batches, fan-ins): msgpack maps written by compare-and-set."""

from __future__ import annotations

import logging
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec
from natsched.errors import CodecError

log = logging.getLogger(__name__)


class ChainRecords:
    def __init__(self, bucket: KeyValue) -> None:
        self.bucket = bucket

    async def read(self, key: str) -> tuple[dict[str, Any], int | None]:
        """The record and its revision; ({}, None) when there is none (an unreadable one keeps
        its revision, so that it can still be replaced or deleted by compare-and-set)."""
        try:
            entry = await self.bucket.get(key)
        except KeyNotFoundError:
            return {}, None
        if not entry.value:
            return {}, None
        try:
            return dict(codec.unpack(entry.value, key)), entry.revision
        except CodecError:
            return {}, entry.revision

    async def exists(self, key: str) -> bool:
        return (await self.read(key))[1] is not None

    async def write(self, key: str, value: dict[str, Any], revision: int | None) -> bool:
        """Create (``revision`` None) or update at ``revision``; False if another write won."""
        try:
            if revision is None:
                await self.bucket.create(key, codec.pack(value))
            else:
                await self.bucket.update(key, codec.pack(value), last=revision)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def delete(self, key: str, revision: int | None) -> bool:
        if revision is None:
            return True
        try:
            await self.bucket.delete(key, last=revision)
            return True
        except Exception as exc:  # noqa: BLE001 - nats-py raises APIError for a wrong revision here
            log.debug("delete %s at %s lost the race: %r", key, revision, exc)
            return False
