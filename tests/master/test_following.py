"""The shared durable consumers redeliver an unacknowledged event within a short ack_wait."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import api as js_api

from natsched import subjects
from natsched.buckets import ensure_all
from natsched.master.following import ACK_WAIT
from natsched.master.lease import DEFAULT_TTL
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings

DURABLES = (subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE, subjects.NOTIFY_DURABLE)


async def test_a_consumer_made_with_the_old_ack_wait_is_brought_down_to_the_short_one(
    nc: Client, conn: ConnectionSettings
) -> None:
    js = nc.jetstream()
    await ensure_all(js)
    for durable in DURABLES:  # as an older master left them: ack_wait 60 s
        await js.add_consumer(
            subjects.EVENTS_STREAM,
            config=js_api.ConsumerConfig(
                durable_name=durable,
                deliver_group=durable,
                deliver_subject=f"_INBOX.old-{durable}",
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=60.0,
                filter_subjects=["natsched.event.*.*.*.failed"],
            ),
        )
    created = {d: (await js.consumer_info(subjects.EVENTS_STREAM, d)).created for d in DURABLES}
    async with MasterService(conn):
        for durable in DURABLES:
            info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
            assert info.config.ack_wait == ACK_WAIT <= DEFAULT_TTL, durable
            assert info.created == created[durable], "same consumer (position kept), updated in place"
            # ... and pushing where every master listens, not to the inbox of its creator.
            assert info.config.deliver_subject == subjects.master_deliver_subject(durable)
