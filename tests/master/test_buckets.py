"""Opening natsched's buckets while another master creates them."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js import api

from natsched import subjects
from natsched.buckets import refuse_rollups


async def test_a_bucket_another_master_is_still_creating_is_waited_for_not_refused(nc: Client) -> None:
    """In a cluster, a bucket another master has just created was unknown for a moment to the
    server a second master asked ('stream not found'), and that master exited at start-up.
    Here the bucket appears 0.5 s after the master asked about it: it is made safe all the same."""
    js = nc.jetstream()
    asking = asyncio.create_task(refuse_rollups(js, "late_bucket"))
    await asyncio.sleep(0.5)
    assert not asking.done(), asking  # still asking: 'not found' is not the end of it
    await js.create_key_value(config=api.KeyValueConfig(bucket="late_bucket"))
    async with asyncio.timeout(10):
        await asking
    info = await js.stream_info(subjects.kv_stream("late_bucket"))
    assert info.config.allow_rollup_hdrs is False
