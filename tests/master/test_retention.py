"""Retention: the events and logs streams carry the master's age and size limits, also when changed."""

from __future__ import annotations

from nats.aio.client import Client

from natsched import subjects
from natsched.buckets import StorageSettings
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings


async def test_streams_take_the_retention_settings_and_follow_a_change(
    conn: ConnectionSettings, nc: Client
) -> None:
    js = nc.jetstream()
    first = StorageSettings(
        events_max_age=3600, events_max_bytes=50_000_000, logs_max_age=600, logs_max_bytes=5_000_000
    )
    async with MasterService(conn, storage=first):
        events = (await js.stream_info(subjects.EVENTS_STREAM)).config
        logs = (await js.stream_info(subjects.LOGS_STREAM)).config
        assert (events.max_age, events.max_bytes) == (3600, 50_000_000)
        assert (logs.max_age, logs.max_bytes) == (600, 5_000_000)
    changed = StorageSettings(
        events_max_age=7200, events_max_bytes=60_000_000, logs_max_age=600, logs_max_bytes=5_000_000
    )
    async with MasterService(conn, storage=changed):
        events = (await js.stream_info(subjects.EVENTS_STREAM)).config
        assert (events.max_age, events.max_bytes) == (7200, 60_000_000)
        assert events.duplicate_window == 120, "the rest of the stream's config is kept"
