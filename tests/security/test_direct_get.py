"""Attack: copying a value an agent wrote itself over a job definition, through a direct get.

nats-server sends a direct get's answer (the stored message, bytes as they are) to any reply
subject the asker names, unchecked against its permissions, and agents may direct-get the
buckets they read. With ``allow_direct`` on, agent a1 writes a job definition of its own as
its heartbeat and asks for it with the reply subject ``$KV.natsched_jobs.<job>``: the jobs
bucket stores it, and every agent runs its command as root. natsched never turns direct get
on; a master starting on buckets where someone did turns it off.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.js import api as js_api

from natsched import codec, subjects
from natsched.jobspec import parse_job
from natsched.kvscan import scan
from tests.security.hostile import Secured

BUCKETS = [subjects.JOBS_BUCKET, subjects.AGENTS_BUCKET, subjects.SETTINGS_BUCKET, subjects.STATE_BUCKET]


async def test_an_agent_cannot_copy_its_heartbeat_over_a_job(secured: Secured, tmp_path: Path) -> None:
    setup = await secured.connect("natsched-master")
    js = setup.jetstream()
    for bucket in BUCKETS:  # made by someone with direct get on
        await js.create_key_value(config=js_api.KeyValueConfig(bucket=bucket, history=1, direct=True))
    assert (await js.stream_info(subjects.kv_stream(subjects.AGENTS_BUCKET))).config.allow_direct
    events = js_api.StreamConfig(name=subjects.EVENTS_STREAM, subjects=[subjects.EVENTS_SUBJECTS])
    events.allow_direct = True  # agents publish their events here
    await js.add_stream(config=events)

    async with secured.services():  # a master starts on them
        for bucket in BUCKETS:
            assert not (await js.stream_info(subjects.kv_stream(bucket))).config.allow_direct, bucket
        assert not (await js.stream_info(subjects.EVENTS_STREAM)).config.allow_direct
        planted = parse_job(
            {
                "name": "pwned",
                "group": "sec",
                "command": ["touch", str(tmp_path / "pwned")],
                "targets": {"agents": ["*"]},
            }
        )
        a1 = await secured.connect("agent-a1")
        await a1.request(subjects.kv_subject_prefix(subjects.AGENTS_BUCKET) + "a1", codec.encode_job(planted))
        ask = json.dumps({"last_by_subj": subjects.kv_subject_prefix(subjects.AGENTS_BUCKET) + "a1"})
        await a1.publish(
            f"$JS.API.DIRECT.GET.{subjects.kv_stream(subjects.AGENTS_BUCKET)}",
            ask.encode(),
            reply=subjects.kv_subject_prefix(subjects.JOBS_BUCKET) + planted.key,
        )
        await a1.flush()
        await asyncio.sleep(1)
        assert planted.key not in await scan(js, subjects.JOBS_BUCKET)
