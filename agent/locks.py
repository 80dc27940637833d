"""Cluster-wide overlap locks for master-dispatched jobs with ``overlap = "forbid"``.

The lock is the key ``lock.<group>.<job>`` in ``natsched_state``, taken with ``create``
(compare-and-set), held by one run, and deleted when that run ends. A lock whose holder
agent has no heartbeat any more (the agent died) is stale and taken over with
``update(last=revision)``, so a dead agent never blocks a job forever. Mirror jobs do not
use it: they must keep running without NATS, so their overlap policy is per agent.
"""

from __future__ import annotations

import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from natsched import codec, subjects
from natsched.errors import CodecError

log = logging.getLogger(__name__)


def lock_key(job_key: str) -> str:
    return f"lock.{job_key}"


class ClusterLocks:
    def __init__(self, js: JetStreamContext, agent: str) -> None:
        self._js = js
        self._agent = agent

    async def acquire(self, job_key: str, run_id: str) -> str | None:
        """None if this run now holds the lock, else who holds it (for the skip reason)."""
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
        try:
            holder = codec.unpack(entry.value or b"", "lock")
            holder_agent, holder_run = str(holder["agent"]), str(holder["run_id"])
        except (CodecError, KeyError):
            holder_agent, holder_run = "", "?"
        if holder_agent and await self._alive(holder_agent):
            return f"{holder_run} on {holder_agent}"
        try:
            await state.update(lock_key(job_key), value, last=entry.revision)
            log.warning(
                "took over the lock of %s from %s (agent %s is gone)", job_key, holder_run, holder_agent
            )
            return None
        except KeyWrongLastSequenceError:
            return "another run (the lock changed hands just now)"

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
            if codec.unpack(entry.value or b"", "lock").get("run_id") == run_id:
                await state.delete(lock_key(job_key), last=entry.revision)
        except (KeyNotFoundError, CodecError):
            return
        except Exception as exc:  # noqa: BLE001 - a lock left behind expires with this agent's heartbeat
            log.warning("could not release the lock of %s: %r", job_key, exc)
