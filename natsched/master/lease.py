"""The leader lease: one master schedules, the others stand by.

The lease is the key ``leader`` in ``natsched_state``: ``{"master", "term", "renewed"}``.
A master takes it with ``create`` (no lease yet) or, once it is expired or released, with
``update(last=revision)``; both are compare-and-set, so two standbys cannot both win.
The leader renews it every ``ttl / 3`` with ``update(last=revision)``; a renewal that fails
(someone else took it) or cannot be made for ``ttl`` ends its leadership at once. A
renewal counts from when it was sent, not from when its answer was read. A leader whose
lease is not fresh claims nothing until a renewal lands (it still leads: the slots due
meanwhile are claimed late) or fails (a standby took over: it steps down).

Expiry is judged by each standby on its own monotonic clock: a lease whose revision has
not changed for ``ttl`` seconds is expired (no comparison of wall clocks across hosts).
Standbys poll every ``min(1 s, ttl / 5)``, so they take over within ttl + 1 s.

The ``term`` goes up by one with every change of leader and is the fencing token: every
dispatch carries it, and agents refuse a term lower than one the lease showed them (or above
the lease's: agent/fencing.py). A leader that
was frozen (SIGSTOP, a VM pause) finds on waking that its last renewal is older than
``ttl`` on the monotonic clock, which counts the frozen time, and claims nothing until its
renewal says whether it still leads (a standby that took over made it fail: it steps down).
A graceful stop writes ``released`` so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import CodecError

log = logging.getLogger(__name__)
DEFAULT_TTL = 5.0
DECIDE_BOUND = 15.0  # longest wait for a renewal's outcome before a claim (see decided)
DECIDE_POLL = 0.05
PUT_BACK_TRIES = 5  # a leader's put-backs of its lease over foreign values, per renewal


@dataclass(frozen=True, slots=True)
class LeaseView:
    master: str
    term: int
    renewed: float  # the holder's wall clock, for display only
    released: bool
    revision: int


def read_lease(value: bytes | None, revision: int) -> LeaseView | None:
    try:
        data = codec.unpack(value or b"", "lease")
        return LeaseView(
            master=str(data["master"]),
            term=int(data["term"]),
            renewed=float(data.get("renewed", 0.0)),
            released=bool(data.get("released", False)),
            revision=revision,
        )
    except (CodecError, KeyError, TypeError, ValueError):
        return None


class LeaderLease:
    def __init__(
        self,
        state: KeyValue,
        master_id: str,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        another_leads: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._kv = state
        # Asked before taking over a lease that no master wrote: does another master still lead?
        self._another_leads = another_leads
        self.master_id = master_id
        self.ttl = ttl
        self._clock = clock
        self.term = 0  # the current leader's term, as last seen: the fencing token we dispatch with
        self.leader = ""
        self.is_leader = asyncio.Event()
        self.changed = asyncio.Event()  # set on every gain or loss of leadership
        self._revision: int | None = None
        self._renewed_at = 0.0  # our clock, when we last wrote the lease
        self._seen: tuple[int, float] | None = None  # (revision, our clock when first seen)

    @property
    def poll_interval(self) -> float:
        return min(1.0, self.ttl / 5)

    def age(self) -> float | None:
        """Seconds since this master last renewed the lease (None unless it leads)."""
        return self._clock() - self._renewed_at if self.is_leader.is_set() else None

    def held(self) -> bool:
        """Leader, with a renewal younger than ttl (false right after a freeze)."""
        return self.is_leader.is_set() and self._clock() - self._renewed_at < self.ttl

    async def run(self) -> None:
        trouble = ""  # the kind of error of the last failed pass: logged once, not every second
        while True:
            try:
                if self.is_leader.is_set():
                    await self._renew()
                    await asyncio.sleep(self.ttl / 3)
                else:
                    await self._stand_by()
                    await asyncio.sleep(self.poll_interval)
                if trouble:
                    log.info("lease: NATS answers again")
                trouble = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS trouble: a leader that cannot renew steps down
                if type(exc).__name__ != trouble:
                    log.warning("lease: %r (quiet until it changes)", exc)
                trouble = type(exc).__name__
                if self.is_leader.is_set() and not self.held():
                    self._step_down("could not renew the lease in time")
                await asyncio.sleep(self.poll_interval)

    async def _stand_by(self) -> None:
        try:
            entry = await self._kv.get(subjects.LEASE_KEY)
        except KeyNotFoundError:
            await self._take(None, self.term + 1)
            return
        view = read_lease(entry.value, entry.revision or 0)
        if view is None and not codec.is_packed_map(entry.value):
            # No master wrote this (see putback.py: nats-server writes its acknowledgement of any
            # client's publish wherever that client asks): not a release, and not a renewal
            # either. The lease is taken over only once it has been that long without one; its
            # holder, if alive, puts its own back at its next renewal.
            # A standby polling once a second may see only such values while the leader puts its
            # own back in between: before taking over, it asks the masters whether one leads.
            if self._seen is None:
                self._seen = (entry.revision or 0, self._clock())
            elif self._clock() - self._seen[1] >= self.ttl:
                if self._another_leads is not None and await self._another_leads():
                    self._seen = (entry.revision or 0, self._clock())
                    return
                log.warning("lease unreadable for %gs; taking over", self.ttl)
                await self._take(entry.revision, self.term + 1)
            return
        if view is None:
            await self._take(entry.revision, self.term + 1)
            return
        self.term, self.leader = max(self.term, view.term), view.master
        if view.released:
            await self._take(view.revision, view.term + 1)
            return
        now = self._clock()
        if self._seen is None or self._seen[0] != view.revision:
            self._seen = (view.revision, now)
        elif now - self._seen[1] >= self.ttl:
            log.warning("lease of %s (term %d) expired; taking over", view.master, view.term)
            await self._take(view.revision, view.term + 1)

    async def _take(self, revision: int | None, term: int) -> None:
        value = codec.pack({"master": self.master_id, "term": term, "renewed": time.time()})
        sent = self._clock()  # the lease runs from the write, not from its answer (see _renew)
        try:
            if revision is None:
                new_revision = await self._kv.create(subjects.LEASE_KEY, value)
            else:
                new_revision = await self._kv.update(subjects.LEASE_KEY, value, last=revision)
        except KeyWrongLastSequenceError:
            return  # another standby was faster
        self._revision, self._renewed_at = new_revision, sent
        self.term, self.leader = term, self.master_id
        self.is_leader.set()
        self.changed.set()
        log.info("master %s is the leader (term %d)", self.master_id, term)

    async def _renew(self) -> None:
        # A renewal older than ttl (a freeze, NATS away) already stopped our claims (held() is
        # false). Whether we still lead is the CAS's to say: it lands only if no standby took
        # the lease meanwhile (a take-over changes the revision); a stale lease that nobody
        # took is ours again, without a needless failover.
        value = codec.pack({"master": self.master_id, "term": self.term, "renewed": time.time()})
        # Counted from before the write: standbys time the lease from when they see it land, and
        # an answer read late (a freeze, a slow server) must not stretch it past their count.
        sent = self._clock()
        try:
            self._revision = await self._kv.update(subjects.LEASE_KEY, value, last=self._revision)
            self._renewed_at = sent
        except KeyWrongLastSequenceError:
            # Values no master wrote (an agent had nats-server write them here, maybe many a
            # second) leave the lease ours: put it back over the newest, a few times if need be.
            for _ in range(PUT_BACK_TRIES):
                foreign = await self._foreign_revision()
                if foreign is None:
                    break  # a master's value: another master took the lease
                try:
                    self._revision = await self._kv.update(subjects.LEASE_KEY, value, last=foreign)
                    self._renewed_at = sent
                    log.warning("lease: a value no master wrote replaced it; put back")
                    return
                except KeyWrongLastSequenceError:
                    continue
            self._step_down("another master took the lease")

    async def _foreign_revision(self) -> int | None:
        """The lease's revision if it holds a value no master writes (not a msgpack map)."""
        try:
            entry = await self._kv.get(subjects.LEASE_KEY)
        except KeyNotFoundError:
            return None
        return None if codec.is_packed_map(entry.value) else entry.revision

    async def decided(self) -> bool:
        """May this master claim now? True while the lease is fresh. Not fresh, but still the
        leader (a renewal is out: NATS slow or restarting), it waits for that renewal's outcome:
        a slot due meanwhile is claimed late if the renewal lands, rather than dropped while
        this master goes on leading. False once leadership ended or changed hands, or after
        ``DECIDE_BOUND`` (the renewal's own timeout ends it well before)."""
        term, deadline = self.term, time.monotonic() + DECIDE_BOUND
        while self.is_leader.is_set() and self.term == term and time.monotonic() < deadline:
            if self.held():
                return True
            await asyncio.sleep(DECIDE_POLL)
        return False

    def _step_down(self, why: str) -> None:
        log.warning("master %s is no longer the leader: %s", self.master_id, why)
        self.is_leader.clear()
        self.changed.set()
        self._seen = None

    async def release(self) -> None:
        """Graceful stop: hand over at once (a standby sees ``released``)."""
        if not self.is_leader.is_set() or self._revision is None:
            return
        value = codec.pack(
            {"master": self.master_id, "term": self.term, "renewed": time.time(), "released": True}
        )
        with contextlib.suppress(Exception):
            await self._kv.update(subjects.LEASE_KEY, value, last=self._revision)
            log.info("master %s released the lease", self.master_id)
        self.is_leader.clear()
        self.changed.set()

    async def refresh(self) -> int:
        """Re-read the current term (after an agent said ours is stale)."""
        with contextlib.suppress(KeyNotFoundError):
            entry = await self._kv.get(subjects.LEASE_KEY)
            view = read_lease(entry.value, entry.revision or 0)
            if view is not None:
                self.term, self.leader = max(self.term, view.term), view.master
        return self.term
