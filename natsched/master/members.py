"""Which pools an agent really belongs to: its membership key, not its heartbeat.

An agent writes its heartbeat itself, so the pools it names there are a claim, not a
proof: an agent whose credential allows no pool could name any pool, be sent that pool's
load-balance runs by name (and answer "started" without running them), receive the slave
runs aimed at the pool, and hold the pool's jobs' overlap locks. Only a credential of the
pool may write ``member.<pool>.<agent>`` in ``natsched_claims`` (``natsched/claims.py``),
so a master counts a pool of a heartbeat only when that key is there. A pool not proven
yet still gets its runs through its queue group, which the credential guards itself.

A proof counts while it is fresh (``claims.proof_max_age``: two of the agent's refreshes
missed, on the server's clock): an agent whose credential lost the pool or tag cannot rewrite
it, and its old key no longer counts within about two hours (it lived a day).

Tags the same way (``tagged.<tag>.<agent>``, written only by a credential given the tag,
``natsched permissions --agent-tags``): a heartbeat's tag that is not proven does not count,
so an agent cannot be sent the runs of jobs aimed at a tag, nor have its completions of them
followed by chains and notifications, by naming the tag in its heartbeat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from natsched import subjects
from natsched.claims import Kind, decode_claim, open_claims, proof_age, proof_max_age
from natsched.models import Heartbeat

log = logging.getLogger(__name__)

RECHECK = 600.0  # a proven membership is read again after this long (stale, or deleted by hand)
RETRY = 2.0  # an unproven one is read again no sooner than this
CHECK_TIMEOUT = 1.0
MAX_POOLS = 32  # pools (and tags) of one heartbeat that are checked; more are not counted
MAX_KNOWN = 10_000  # memory bound: an agent naming ever new pools cannot grow it further


class PoolMembers:
    def __init__(self, js: JetStreamContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._js = js
        self._clock = clock
        self._kv: KeyValue | None = None
        # (agent, pool or tag, kind) -> (member, when)
        self._known: dict[tuple[str, str, Kind], tuple[bool, float]] = {}
        self._warned: set[tuple[str, str, Kind]] = set()
        self._max_age = proof_max_age(None)  # of a proof that counts (the bucket's TTL, once read)
        # agent -> "pool p" / "tag web" its last vouched heartbeat named and did not prove
        # (the masters' status answer shows them: 'natsched agents', the dashboard)
        self.unproven: dict[str, tuple[str, ...]] = {}

    async def proven(self, agent: str, pool: str, *, fresh: bool = False, kind: Kind = "pool") -> bool:
        """True if ``agent`` wrote its membership key of ``pool`` (or, ``kind`` "tag", its key of
        that tag; read at most every RECHECK s; ``fresh``: a "no" known is read again at once)."""
        now = self._clock()
        which = (agent, pool, kind)
        known = self._known.get(which)
        recent = known is not None and now - known[1] < (RECHECK if known[0] else RETRY)
        if known is not None and recent and (known[0] or not fresh):
            return known[0]
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                if self._kv is None:
                    kv = await open_claims(self._js)
                    self._max_age = proof_max_age((await kv.status()).ttl)
                    self._kv = kv
                age = await proof_age(self._js, agent, pool, kind)
                member = age is not None and age <= self._max_age
        except Exception as exc:  # noqa: BLE001 - NATS hiccup: keep what we knew, unproven if nothing
            log.debug("membership of %s in %s %s not readable: %r", agent, kind, pool, exc)
            return known[0] if known is not None else False
        if len(self._known) >= MAX_KNOWN:
            self._known = {k: v for k, v in self._known.items() if v[0]}
            self._warned.clear()
        self._known[which] = (member, now)
        if member:
            self._warned.discard(which)
        elif which not in self._warned and len(self._warned) < MAX_KNOWN:
            self._warned.add(which)
            log.warning(
                "agent %s names %s %s in its heartbeat but wrote no key proving it (does its "
                "credential allow it?): it is sent none of the runs aimed at that %s by name",
                agent,
                kind,
                pool,
                kind,
            )
        return member

    async def took_from_pool(self, agent: str, pools: Iterable[str], run_id: str) -> bool:
        """Did ``agent`` win ``run_id`` from one of ``pools``' queue groups (its pool claim)?"""
        for pool in pools:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    if self._kv is None:
                        self._kv = await open_claims(self._js)
                    entry = await self._kv.get(subjects.pool_claim_key(pool, run_id))
                if decode_claim(entry.value, pool).agent == agent:
                    return True
            except Exception as exc:  # noqa: BLE001 - no such claim, not one of ours, NATS hiccup
                log.debug("pool claim of %s in %s not read: %r", run_id, pool, exc)
        return False

    async def vouch(self, heartbeat: Heartbeat) -> Heartbeat:
        """``heartbeat`` with only the pools and tags its agent proved."""
        agent = heartbeat.agent
        if not heartbeat.pools and not heartbeat.tags:
            self.unproven.pop(agent, None)
            return heartbeat
        pools = tuple([p for p in heartbeat.pools[:MAX_POOLS] if await self.proven(agent, p)])
        tags = tuple([t for t in heartbeat.tags[:MAX_POOLS] if await self.proven(agent, t, kind="tag")])
        if pools == heartbeat.pools and tags == heartbeat.tags:
            self.unproven.pop(agent, None)
            return heartbeat
        if agent in self.unproven or len(self.unproven) < MAX_KNOWN:
            self.unproven[agent] = (
                *(f"pool {p}" for p in heartbeat.pools if p not in pools),
                *(f"tag {t}" for t in heartbeat.tags if t not in tags),
            )[:MAX_POOLS]
        return dataclasses.replace(heartbeat, pools=pools, tags=tags)
