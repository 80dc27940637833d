"""Cluster-wide overlap locks for load-balance jobs, kept by the masters for the agents.

The lock is the key ``lock.<group>.<job>`` in ``natsched_state``, taken with ``create``
(compare-and-set), held by one run, and deleted when that run ends. Agents do not write it:
they ask a master on ``natsched.lock.<agent>`` (``agent/locks.py``), and an agent may
publish only on its own name, so the holder the master records is the agent that asked,
proven by the subject. No agent can name another (live) agent as the holder and block
the job, nor release a lock another agent holds. Nor may an agent take the lock of a job
that cannot run on it: the job must be a load-balance job with an overlap lock, and the
agent a member of one of its pools, proven by its membership key or by the run's pool
claim (both written only by a credential of the pool), so an agent of another pool, or of
none, cannot block a job by holding its lock (nor fill the state bucket with locks of names
no job has). A lock whose holder agent has no heartbeat any more (the agent died) is stale
and taken over with ``update(last=revision)``, so a dead agent never blocks a job forever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.claims import decode_claim
from natsched.connection import subscribe_inbound
from natsched.errors import CodecError, NatschedError
from natsched.locking import LockHolder, read_holder
from natsched.master.handling import SideBySide
from natsched.master.jobindex import JobIndex
from natsched.master.members import PoolMembers
from natsched.models import Mode, Overlap
from natsched.quietlog import Throttled
from natsched.subjects import lock_key

log = logging.getLogger(__name__)
quiet = Throttled(log)
OPERATIONS = ("acquire", "release")
CONCURRENCY = 256  # lock requests handled at once (each a few KV round trips)


def decode_lock_request(subject: str, data: bytes) -> tuple[str, str, str, str]:
    """(agent, op, job key, run id) of a lock request; the agent is the subject's."""
    agent = subject.rpartition(".")[2]
    body = codec.unpack(data, "lock request")
    op, job, run_id = body.get("op"), body.get("job"), body.get("run_id")
    if not subjects.is_token(agent) or op not in OPERATIONS or not subjects.is_token(run_id):
        raise CodecError(f"lock request: bad agent, op or run id ({subjects.shown(body)})")
    try:
        subjects.split_job_key(str(job) if isinstance(job, str) else "")
    except ValueError:
        raise CodecError(f"lock request: bad job {subjects.shown(job)}") from None
    return agent, str(op), str(job), str(run_id)


class LockService:
    def __init__(
        self,
        nc: Client,
        state: KeyValue,
        agents: KeyValue,
        *,
        index: JobIndex,
        members: PoolMembers,
        claims: KeyValue,
    ) -> None:
        self._nc = nc
        self._replies = nc  # the connection requests arrive on (start): only it may answer them
        self._state = state
        self._agents = agents
        self._index = index
        self._members = members
        self._claims = claims
        # Each request in its own task: every lock is its own key, decided by compare-and-set,
        # so the requests of different runs need not wait for one another's round trips.
        self._side_by_side = SideBySide(self.handle, CONCURRENCY)
        self.serve = self._side_by_side.take

    async def start(self, requests: Client) -> None:
        """Serve lock requests arriving on ``requests``, and answer them through it."""
        self._replies = requests
        await subscribe_inbound(requests, subjects.LOCK_ALL, queue=subjects.API_QUEUE, cb=self.serve)

    async def close(self) -> None:
        await self._side_by_side.close()

    async def handle(self, msg: Msg) -> None:
        reply: dict[str, Any]
        try:
            agent, op, job, run_id = decode_lock_request(msg.subject, msg.data)
            if op == "acquire":
                refusal = await self.refusal(agent, job, run_id)
                if refusal:
                    raise CodecError(f"lock of {job} refused to agent {agent}: {refusal}")
                holder = await self.acquire(agent, job, run_id)
                reply = {"ok": True, "holder": None if holder is None else [holder.run_id, holder.agent]}
            else:
                await self.release(agent, job, run_id)
                reply = {"ok": True}
        except CodecError as exc:
            quiet.log(logging.WARNING, "refused", "%s", exc)  # an agent's flood: not a line each
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - NATS trouble: the agent retries or says why
            log.warning("lock request on %s failed: %r", msg.subject, exc)
            reply = {"ok": False, "error": f"lock not decided: {exc!r}"}
        if msg.reply:
            await self._replies.publish(msg.reply, codec.pack(reply))

    async def refusal(self, agent: str, job: str, run_id: str) -> str:
        """Why ``agent`` may not hold the lock of ``job`` for ``run_id`` ("" when it may)."""
        try:
            spec = await self._index.find(job)
        except NatschedError as exc:
            return str(exc)
        if spec.key != job or spec.mode is not Mode.LOAD_BALANCE or spec.overlap is Overlap.ALLOW:
            return "no load-balance job with an overlap lock has this name"
        for pool in spec.targets.pools:
            if await self._members.proven(agent, pool) or await self._pool_claim(agent, pool, run_id):
                return ""
        return f"it is no member of the job's pools ({', '.join(spec.targets.pools)})"

    async def _pool_claim(self, agent: str, pool: str, run_id: str) -> bool:
        """Did ``agent`` win ``run_id`` from ``pool``'s queue group? (Only members write those keys.)"""
        try:
            entry = await self._claims.get(subjects.pool_claim_key(pool, run_id))
            return decode_claim(entry.value, pool).agent == agent
        except Exception:  # noqa: BLE001 - no such claim, or not one of ours
            return False

    async def acquire(self, agent: str, job: str, run_id: str) -> LockHolder | None:
        """None if ``run_id`` on ``agent`` now holds the lock of ``job``, else who holds it."""
        value = codec.pack({"run_id": run_id, "agent": agent, "since": time.time()})
        for _ in range(3):  # released in between: try again, a few times
            try:
                await self._state.create(lock_key(job), value)
                return None
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._state.get(lock_key(job))
            except KeyNotFoundError:
                continue
            holder = read_holder(entry.value)
            if holder.run_id == run_id and holder.agent == agent:
                return None  # asked again (a repeated request): it holds it already
            if holder.agent and await self._alive(holder.agent):
                return holder
            try:
                await self._state.update(lock_key(job), value, last=entry.revision)
            except KeyWrongLastSequenceError:
                return LockHolder(run_id="?", agent="")  # changed hands just now
            log.warning("%s took over the lock of %s from %s (agent gone)", agent, job, holder)
            return None
        return LockHolder(run_id="?", agent="")

    async def release(self, agent: str, job: str, run_id: str) -> None:
        """Delete the lock if ``run_id`` on ``agent`` holds it (nobody else's)."""
        try:
            entry = await self._state.get(lock_key(job))
        except KeyNotFoundError:
            return
        holder = read_holder(entry.value)
        if holder.run_id == run_id and holder.agent == agent:
            await self._state.delete(lock_key(job), last=entry.revision)

    async def _alive(self, agent: str) -> bool:
        try:
            entry = await self._agents.get(agent)
        except KeyNotFoundError:
            return False
        return bool(entry.value)
