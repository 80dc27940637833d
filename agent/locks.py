"""Cluster-wide overlap locks for load-balance jobs (``forbid``, ``replace``, ``queue``).

The lock is the key ``lock.<group>.<job>`` in ``natsched_state``, taken with ``create``
(compare-and-set), held by one run, and deleted when that run ends. A lock whose holder
agent has no heartbeat any more (the agent died) is stale and taken over with
``update(last=revision)``, so a dead agent never blocks a job forever. Mirror jobs do not
use it: they must keep running without NATS, so their overlap policy is per agent; a
slave job's runs are one per target, so its policy is per target too.
"""

from __future__ import annotations

import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from natsched import codec, subjects
from natsched.locking import LockHolder, read_holder
from natsched.subjects import lock_key

log = logging.getLogger(__name__)


class ClusterLocks:
    def __init__(self, js: JetStreamContext, agent: str) -> None:
        self._js = js
        self._agent = agent

    async def acquire(self, job_key: str, run_id: str) -> LockHolder | None:
        """None if this run now holds the lock, else who holds it."""
        state = await self._js.key_value(subjects.STATE_BUCKET)
        value = codec.pack({"run_id": run_id, "agent": self._agent, "since": time.time()})
        try:
            await state.create(lock_key(job_key), value)
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await state.get(lock_key(job_key))
        except KeyNotFoundError:
            return await self.acquire(job_key, run_id)  # released in between
        holder = read_holder(entry.value)
        if holder.agent and await self._alive(holder.agent):
            return holder
        try:
            await state.update(lock_key(job_key), value, last=entry.revision)
            log.warning(
                "took over the lock of %s from %s (agent %s is gone)", job_key, holder.run_id, holder.agent
            )
            return None
        except KeyWrongLastSequenceError:
            return LockHolder(run_id="?", agent="")  # changed hands just now

    async def _alive(self, agent: str) -> bool:
        agents = await self._js.key_value(subjects.AGENTS_BUCKET)
        try:
            entry = await agents.get(agent)
        except KeyNotFoundError:
            return False
        return bool(entry.value)

    async def release(self, job_key: str, run_id: str) -> None:
        state = await self._js.key_value(subjects.STATE_BUCKET)
        try:
            entry = await state.get(lock_key(job_key))
            if read_holder(entry.value).run_id == run_id:
                await state.delete(lock_key(job_key), last=entry.revision)
        except KeyNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - a lock left behind expires with this agent's heartbeat
            log.warning("could not release the lock of %s: %r", job_key, exc)
