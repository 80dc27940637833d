"""Cluster-wide overlap locks for load-balance jobs (``forbid``, ``replace``, ``queue``).

A master keeps the lock for us (``natsched/master/locks.py``): this agent asks on its own
``natsched.lock.<agent>``, the only lock subject its credential may publish on, so the
master records the holder the subject proves and no agent can hold or free a lock in
another's name. Mirror jobs do not use it: they must keep running without NATS, so their
overlap policy is per agent; a slave job's runs are one per target, so its policy is per
target too.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client

from natsched import codec, subjects
from natsched.errors import CodecError
from natsched.locking import LockHolder

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 5.0


class ClusterLocks:
    def __init__(self, nc: Client, agent: str, *, timeout: float = LOCK_TIMEOUT) -> None:
        self._nc = nc
        self._agent = agent
        self._timeout = timeout

    async def acquire(self, job_key: str, run_id: str) -> LockHolder | None:
        """None if this run now holds the lock, else who holds it (raises if undecided)."""
        holder = (await self._ask("acquire", job_key, run_id)).get("holder")
        if holder is None:
            return None
        try:
            return LockHolder(run_id=str(holder[0]), agent=str(holder[1]))
        except (IndexError, KeyError, TypeError):
            raise CodecError(f"lock reply: bad holder {subjects.shown(holder)}") from None

    async def release(self, job_key: str, run_id: str) -> None:
        try:
            await self._ask("release", job_key, run_id)
        except Exception as exc:  # noqa: BLE001 - a lock left behind is taken over once we are gone
            log.warning("could not release the lock of %s: %r", job_key, exc)

    async def _ask(self, op: str, job_key: str, run_id: str) -> dict[str, Any]:
        msg = await self._nc.request(
            subjects.lock_subject(self._agent),
            codec.pack({"op": op, "job": job_key, "run_id": run_id}),
            timeout=self._timeout,
        )
        reply = codec.unpack(msg.data, "lock reply")
        if not reply.get("ok"):
            raise CodecError(f"lock {op} of {job_key}: {reply.get('error', 'refused')}")
        return reply
