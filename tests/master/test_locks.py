"""Cluster-wide overlap locks (``natsched/master/locks.py``): a master decides many at once."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.claims import open_claims, prove_membership
from natsched.events import new_run_id
from natsched.jobspec import parse_job
from natsched.master.jobindex import JobIndex
from natsched.master.locks import LockService
from natsched.master.members import PoolMembers


class HeldBack(KeyValue):
    """The real state bucket, except that creating one key waits until ``go`` is set."""

    def __init__(self, kv: KeyValue, key: str) -> None:
        self.__dict__.update(kv.__dict__)
        self.key = key
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def create(
        self, key: str, value: bytes, validate_keys: bool = True, msg_ttl: float | None = None
    ) -> int:
        if key == self.key:
            self.entered.set()
            await self.go.wait()
        return await super().create(key, value, validate_keys=validate_keys, msg_ttl=msg_ttl)


async def acquire(nc: Client, job: str) -> dict[str, Any]:
    """x1's request for ``job``'s lock: the master's reply, without its version stamp."""
    body = codec.pack({"op": "acquire", "job": job, "run_id": new_run_id()})
    reply = codec.unpack((await nc.request(subjects.lock_subject("x1"), body, timeout=10)).data, "lock reply")
    reply.pop(codec.VERSION_KEY)
    return reply


async def test_a_lock_request_waiting_on_nats_holds_back_no_other(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_all(js)
    jobs = await js.key_value(subjects.JOBS_BUCKET)
    for name in ("slow", "fast"):
        spec = parse_job(
            {
                "name": name,
                "group": "g",
                "mode": "load-balance",
                "overlap": "forbid",
                "command": ["true"],
                "targets": {"pools": ["p"]},
            }
        )
        await jobs.put(spec.key, codec.encode_job(spec))
    index = JobIndex(jobs)
    watching = asyncio.create_task(index.watch())
    claims = await open_claims(js)
    await prove_membership(claims, "x1", ["p"])
    state = HeldBack(await js.key_value(subjects.STATE_BUCKET), subjects.lock_key("g.slow"))
    locks = LockService(
        nc,
        state,
        await js.key_value(subjects.AGENTS_BUCKET),
        index=index,
        members=PoolMembers(js),
        claims=claims,
    )
    await locks.start(nc)
    try:
        slow = asyncio.create_task(acquire(nc, "g.slow"))
        async with asyncio.timeout(5):
            await state.entered.wait()  # g.slow's lock write is out (and held)
        async with asyncio.timeout(3):
            assert await acquire(nc, "g.fast") == {"ok": True, "holder": None}
        assert not slow.done()
        state.go.set()
        async with asyncio.timeout(5):
            assert await slow == {"ok": True, "holder": None}
    finally:
        await locks.close()
        watching.cancel()
