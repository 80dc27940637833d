"""Creating and opening natsched's KV buckets and streams (idempotently)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from natsched import subjects
from natsched.subjects import SECRETS_BUCKET

log = logging.getLogger(__name__)

# Heartbeats expire from the agents bucket after this long without a put.
AGENT_TTL = 15.0
KV_DELETE = "DEL"
KV_PURGE = "PURGE"
KV_OPERATION_HEADER = "KV-Operation"
MARKER_REASON_HEADER = "Nats-Marker-Reason"


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageSettings:
    """Replication and retention of what natsched keeps in JetStream."""

    replicas: int = 1
    events_max_age: float = 30 * 86400.0
    events_max_bytes: int = 1024**3
    logs_max_age: float = 7 * 86400.0
    logs_max_bytes: int = 1024**3
    # Chain progress (fan-in state, dedupe claims) outlives any chain run by far.
    chains_max_age: float = 7 * 86400.0
    # Run claims (natsched/claims.py): a frozen agent holding a dispatch older than this could
    # start it after its withdrawal expired, so keep them far longer than any freeze.
    claims_max_age: float = 86400.0


# In a cluster, a stream another master has just created may be unknown for a moment to the
# server this master asks (seen: 'stream not found' right after the other's create succeeded,
# 1 fresh 3-node cluster in 22; the master exited 1). Asked again for up to this long.
JUST_CREATED_WAIT = 5.0
JUST_CREATED_PAUSE = 0.1

# A claim is a few dozen bytes (names are at most 64 characters, a master id about 80): the
# bound keeps an agent, which writes its claim keys itself, from storing 1 MB values under
# as many run ids as it likes in storage every bucket and stream shares.
CLAIM_MAX_VALUE = 1024


async def _kv(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        try:
            log.info("creating KV bucket %s", config.bucket)
            kv = await js.create_key_value(config=config)
        except BadRequestError:
            # Another master created it in between: use theirs.
            await stream_info_once_created(js, subjects.kv_stream(config.bucket))
            kv = await js.key_value(config.bucket)
    await refuse_rollups(js, config.bucket)
    if config.max_value_size:
        await _limit_values(js, config.bucket, config.max_value_size)
    return kv


async def _limit_values(js: JetStreamContext, bucket: str, size: int) -> None:
    """The bucket's value size limit, also on a bucket created before it existed."""
    info = await stream_info_once_created(js, subjects.kv_stream(bucket))
    if info.config.max_msg_size != size:
        log.info("bucket %s: values up to %d bytes from now on", bucket, size)
        info.config.max_msg_size = size
        await js.update_stream(config=info.config)


async def refuse_rollups(js: JetStreamContext, bucket: str) -> None:
    """Make the bucket's stream refuse ``Nats-Rollup`` headers and direct gets (also on
    existing buckets).

    nats-py creates KV streams with ``allow_rollup_hdrs=True``: then anyone allowed to put
    one key (an agent, its heartbeat) can send ``Nats-Rollup: all`` and replace the whole
    bucket with that message. Subject permissions cannot filter headers, so the stream
    refuses them. The cost: nats-py's ``kv.purge(key)`` (a per-subject rollup) fails on
    these buckets; natsched deletes keys with ``kv.delete``.
    """
    info = await stream_info_once_created(js, subjects.kv_stream(bucket))
    config, changed = info.config, False
    if config.allow_rollup_hdrs:
        log.info("bucket %s: refusing rollup headers from now on", bucket)
        config.allow_rollup_hdrs, changed = False, True
    if _direct_get_turned_off(config, f"bucket {bucket}"):
        changed = True
    if changed:
        await js.update_stream(config=config)


def _direct_get_turned_off(config: api.StreamConfig, what: str) -> bool:
    """Turn direct get off in ``config`` if it is on (True: the stream needs an update).

    nats-server sends a direct get's answer, the stored message as it is, to any reply
    subject the asker names, unchecked against its permissions: every role that may read a
    bucket or stream (agents read several) could copy a value it wrote itself (its heartbeat,
    its events) over a job definition. natsched never turns it on; an operator who did is undone.
    """
    if not (config.allow_direct or config.mirror_direct):
        return False
    log.warning("%s: direct get turned off (it lets readers copy messages into keys)", what)
    config.allow_direct = config.mirror_direct = False
    return True


async def _stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        info = await js.stream_info(config.name or "")
    except NotFoundError:
        info = None
    if info is not None:
        current, changed = info.config, False
        if (current.max_age, current.max_bytes) != (config.max_age, config.max_bytes):
            # Retention comes from the master's settings: apply a change to the existing stream.
            log.info("stream %s: retention %ss / %s bytes", config.name, config.max_age, config.max_bytes)
            current.max_age, current.max_bytes, changed = config.max_age, config.max_bytes, True
        if _direct_get_turned_off(current, f"stream {config.name}"):  # agents publish here too
            changed = True
        if changed:
            await js.update_stream(config=current)
        return
    try:
        log.info("creating stream %s", config.name)
        await js.add_stream(config=config)
    except BadRequestError:  # another master created it in between
        await stream_info_once_created(js, config.name or "")


async def stream_info_once_created(
    js: JetStreamContext, stream: str, wait: float = JUST_CREATED_WAIT
) -> api.StreamInfo:
    """``js.stream_info(stream)`` for a stream that exists or is being created (by this master
    or another): 'not found' is asked again for up to ``wait`` seconds (``JUST_CREATED_WAIT``)
    before it is raised."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await js.stream_info(stream)
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(JUST_CREATED_PAUSE)


async def ensure_all(js: JetStreamContext, storage: StorageSettings | None = None) -> None:
    """Create every bucket and stream natsched needs, if missing (the master does this)."""
    storage = storage or StorageSettings()
    r = storage.replicas
    await _kv(
        js,
        api.KeyValueConfig(
            bucket=subjects.JOBS_BUCKET, history=1, replicas=r, description="natsched job definitions"
        ),
    )
    await _kv(js, api.KeyValueConfig(bucket=subjects.SETTINGS_BUCKET, history=5, replicas=r))
    await _kv(js, api.KeyValueConfig(bucket=subjects.AGENTS_BUCKET, history=1, replicas=r, ttl=AGENT_TTL))
    await _kv(js, api.KeyValueConfig(bucket=subjects.STATE_BUCKET, history=1, replicas=r))
    await _kv(js, api.KeyValueConfig(bucket=SECRETS_BUCKET, history=1, replicas=r, description="encrypted"))
    await _kv(
        js,
        api.KeyValueConfig(bucket=subjects.CHAINS_BUCKET, history=1, replicas=r, ttl=storage.chains_max_age),
    )
    # Agents write their own claim keys here, so it holds nothing else (and refuses rollups, as all).
    await _kv(
        js,
        api.KeyValueConfig(
            bucket=subjects.CLAIMS_BUCKET,
            history=1,
            replicas=r,
            ttl=storage.claims_max_age,
            max_value_size=CLAIM_MAX_VALUE,
        ),
    )
    await _stream(
        js,
        api.StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_SUBJECTS],
            num_replicas=r,
            max_age=storage.events_max_age,
            max_bytes=storage.events_max_bytes,
            duplicate_window=120.0,
            storage=api.StorageType.FILE,
        ),
    )
    await _stream(
        js,
        api.StreamConfig(
            name=subjects.LOGS_STREAM,
            subjects=[subjects.LOGS_SUBJECTS],
            num_replicas=r,
            max_age=storage.logs_max_age,
            max_bytes=storage.logs_max_bytes,
            storage=api.StorageType.FILE,
        ),
    )


def is_delete(headers: dict[str, str] | None) -> bool:
    """True if a KV stream message marks its key deleted (DEL/PURGE or a server marker)."""
    if not headers:
        return False
    if headers.get(KV_OPERATION_HEADER) in (KV_DELETE, KV_PURGE):
        return True
    return headers.get(MARKER_REASON_HEADER) in ("MaxAge", "Purge", "Remove")
