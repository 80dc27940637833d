"""Attack: wiping a bucket with one header (``Nats-Rollup: all`` on a key an agent may write)."""

from __future__ import annotations

import json

from nats.js import api as js_api

from natsched import codec, subjects
from natsched.kvscan import scan
from tests.security.hostile import Secured

BUCKETS = [
    subjects.JOBS_BUCKET,
    subjects.SETTINGS_BUCKET,
    subjects.AGENTS_BUCKET,
    subjects.STATE_BUCKET,
    subjects.SECRETS_BUCKET,
    subjects.CHAINS_BUCKET,
    subjects.CLAIMS_BUCKET,
]


async def test_an_agent_cannot_roll_up_a_bucket(secured: Secured) -> None:
    # An existing deployment: buckets made as nats-py makes them (rollups allowed).
    setup = await secured.connect("natsched-master")
    js = setup.jetstream()
    await js.create_key_value(config=js_api.KeyValueConfig(bucket=subjects.AGENTS_BUCKET, history=1, ttl=15))
    await js.create_key_value(config=js_api.KeyValueConfig(bucket=subjects.STATE_BUCKET, history=1))
    assert (await js.stream_info(subjects.kv_stream(subjects.AGENTS_BUCKET))).config.allow_rollup_hdrs

    async with secured.services("a1", "a2"):
        for bucket in BUCKETS:  # the master's start changed them all
            info = await js.stream_info(subjects.kv_stream(bucket))
            assert not info.config.allow_rollup_hdrs, bucket
        state_before = await scan(js, subjects.STATE_BUCKET)
        lease = codec.unpack(state_before["leader"].value, "lease")

        a1 = await secured.connect("agent-a1")
        own_key = subjects.kv_subject_prefix(subjects.AGENTS_BUCKET) + "a1"
        heartbeat = (await scan(js, subjects.AGENTS_BUCKET))["a1"].value
        for subject in (own_key, subjects.kv_subject_prefix(subjects.STATE_BUCKET) + "lock.zz.zz"):
            try:
                ack = await a1.request(subject, heartbeat, timeout=2, headers={"Nats-Rollup": "all"})
                assert "error" in json.loads(ack.data), (subject, ack.data)  # refused by the stream
            except Exception as exc:  # noqa: BLE001 - or refused by the permissions: no ack at all
                assert "timeout" in repr(exc).lower(), (subject, exc)

        agents = await scan(js, subjects.AGENTS_BUCKET)
        assert {"a1", "a2"} <= set(agents)  # a2's heartbeat is still there
        state = await scan(js, subjects.STATE_BUCKET)
        assert set(state_before) <= set(state)  # the lease and every cursor survived
        assert codec.unpack(state["leader"].value, "lease")["term"] == lease["term"]
