"""The master's scheduler for slave and load-balance jobs: the shared core over ``natsched_state``.

Definitions come from the master's ``JobIndex`` (no watch of its own); each due slot is
*claimed* by advancing the job's cursor in ``natsched_state`` with compare-and-set, and
only then dispatched. Two masters racing for a slot cannot both win the CAS, so a slot is
dispatched once; a master whose lease is not fresh claims nothing.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ClaimUndecidedError, CodecError
from natsched.kvscan import KvValue, scan
from natsched.master.jobindex import JobIndex
from natsched.models import JobSpec, Mode
from natsched.schedule import Due, Schedule, Scheduler
from natsched.triggers.fire import time_triggers
from natsched.vocab import RunTrigger

__all__ = ["Due", "KvCursors", "MasterScheduler", "Schedule", "master_scheduled"]

log = logging.getLogger(__name__)
UNDECIDED_BOUND = 30.0  # how long a cursor write NATS did not answer is repeated
UNDECIDED_RETRY = 0.5
# Cursor writes in flight at once: with all of a 1,000-job burst sent before the first answer
# is read, its first run left ~0.1 s after the slot; a window lets the first runs leave at once.
CLAIMS_IN_FLIGHT = 64


# Only a value holding one of these can be a slave or load-balance job (see JobIndex.spec_if).
_NOT_MIRROR = tuple(mode.value.encode() for mode in Mode if mode is not Mode.MIRROR)


def master_scheduled(spec: JobSpec) -> bool:
    """Slave and load-balance jobs with a time trigger are the master's to fire."""
    return spec.enabled and spec.mode is not Mode.MIRROR and bool(time_triggers(spec))


def _cursor(value: bytes | None, key: str) -> dict[str, Any]:
    """A cursor value decoded once ({} when it is not one)."""
    try:
        return codec.unpack(value or b"", f"cursor {key}")
    except CodecError:
        return {}


def _slot(cursor: dict[str, Any]) -> float | None:
    try:
        return float(cursor["slot"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class InheritedSlot:
    """A job's last slot as another master claimed it: dispatched, or not if it died in between."""

    job: str
    slot: float
    at: float  # when it was claimed (the claimer's clock)
    master: str
    trigger: RunTrigger

    def encode(self) -> dict[str, Any]:
        return {"slot": self.slot, "at": self.at, "master": self.master, "trigger": self.trigger.value}

    @classmethod
    def decode(cls, job: str, data: dict[str, Any]) -> InheritedSlot:
        trigger = RunTrigger(str(data.get("trigger", RunTrigger.UNKNOWN.value)))
        return cls(job, float(data["slot"]), float(data.get("at", 0.0)), str(data["master"]), trigger)


def _claims_in(cursor: dict[str, Any], key: str) -> list[InheritedSlot]:
    """The claims a cursor holds: its writer's own, and those its writer carried unchecked
    (``unverified``: carried along until a leader's SlotAudit has seen them)."""
    try:
        carried = [InheritedSlot.decode(key, each) for each in cursor.get("unverified", [])]
        own = [InheritedSlot.decode(key, cursor)] if cursor.get("master") else []
        return carried + own
    except (KeyError, TypeError, ValueError, AttributeError):
        return []


class KvCursors:
    """Per-job last fired slot in ``natsched_state``, advanced with compare-and-set.

    With ``js``, the first load reads every cursor in one go (a new leader with 100k jobs
    does not make 100k round trips before it fires anything); each job's first load is
    served from that read, later ones from the bucket. A stale revision only costs a CAS retry.
    ``on_claimed`` gets each slot the moment its own write is won: 1,000 jobs due at once
    take ~0.35 s of cursor writes, and the first runs need not wait for the last writes. When
    it returns an awaitable, the next claim waits for it: claims keep pace with dispatches, so
    a slot is not claimed long before it can be sent (a leader that dies leaves few claimed
    slots unsent, all within the last moments ``SlotAudit`` looks at).
    """

    def __init__(
        self,
        state: KeyValue,
        *,
        js: JetStreamContext | None = None,
        may_claim: Callable[[], bool] = lambda: True,
        lease_decided: Callable[[], Awaitable[bool]] | None = None,
        master_id: str = "",
        on_claimed: Callable[[Due], Awaitable[None] | None] = lambda due: None,
        update: Callable[[str, bytes, int], Awaitable[int]] | None = None,
    ) -> None:
        self._state = state
        # The compare-and-set write of a claim: KeyValue.update, or the same over leaner requests.
        self._update = update or (lambda key, value, last: state.update(key, value, last=last))
        self._js = js
        self._on_claimed = on_claimed
        self._may_claim = may_claim
        # Asked when ``may_claim`` says no: a lease not fresh may still be ours (a renewal out).
        self._lease_decided = lease_decided
        self._master_id = master_id
        self._revisions: dict[str, int] = {}
        self._first_read: dict[str, KvValue] | None = None
        self._ours: dict[str, str] = {}  # per job, the nonce of our last cursor write that landed
        # Per job, the claims a cursor held that this scheduler did not write: made by another
        # master, or by this one before it stepped down (a slot it may not have dispatched). Met
        # when a cursor is first read, and when a claim of ours finds it already written: a
        # write that landed after that first read (buffered in a client while nats-server
        # restarted) is a claim its own master may have given up on. Audited by SlotAudit,
        # and carried in our own cursor writes until then, so a leader that stops before its
        # audit hands them on to the next.
        self.inherited: dict[str, list[InheritedSlot]] = {}
        self._noted: dict[InheritedSlot, float] = {}  # when each inherited claim was met (monotonic)
        # Per job, our own claims whose dispatch has no outcome yet (``sent`` ends that). Carried
        # in our cursor writes like inherited ones: a later claim of ours overwrites the cursor's
        # own, and a leader that dies while an earlier slot waits on its agents (their answers
        # lost in a NATS restart, 5 s to the timeout) would hand the next leader only the last.
        self._sending: dict[str, list[InheritedSlot]] = {}

    async def load(self, key: str) -> float | None:
        if self._js is not None and self._first_read is None:
            prefix = subjects.cursor_key("")
            read = await scan(self._js, subjects.STATE_BUCKET, f"{prefix}>")
            self._first_read = {k[len(prefix) :]: v for k, v in read.items()}
        if self._first_read is not None and key not in self._revisions:
            first = self._first_read.pop(key, None)
            self._revisions[key] = first.revision if first is not None else 0
            return None if first is None else self._seen(key, _cursor(first.value, key))
        try:
            entry = await self._state.get(subjects.cursor_key(key))
        except KeyNotFoundError:
            self._revisions[key] = 0
            return None
        self._revisions[key] = entry.revision or 0
        return self._seen(key, _cursor(entry.value, key))

    def _seen(self, key: str, cursor: dict[str, Any]) -> float | None:
        """A cursor as read: unless we wrote it, its claims are inherited (its slot returned)."""
        if cursor.get("by", "") != self._ours.get(key, "-"):
            known = self.inherited.setdefault(key, [])
            for each in _claims_in(cursor, key):
                if each not in known:
                    known.append(each)
                    self._noted[each] = time.monotonic()
            if not known:
                del self.inherited[key]
        return _slot(cursor)

    def to_audit(self, settle: float) -> list[InheritedSlot]:
        """The inherited claims met at least ``settle`` seconds ago (their dispatch had time)."""
        since = time.monotonic() - settle
        claims = [each for job in list(self.inherited.values()) for each in job]
        return [each for each in claims if self._noted.get(each, 0.0) <= since]

    def audited(self, checked: list[InheritedSlot]) -> None:
        """These claims were checked: no longer carried in this job's cursor."""
        for each in checked:
            self._noted.pop(each, None)
            left = [i for i in self.inherited.get(each.job, []) if i != each]
            if left:
                self.inherited[each.job] = left
            else:
                self.inherited.pop(each.job, None)

    async def claim(self, due: Sequence[Due]) -> list[Due]:
        """Claim each slot; the CASes of different jobs run concurrently, one job's in order."""
        if not await self._claiming():  # lease lost (e.g. taken over during a freeze): claim nothing
            for each in due:
                log.warning(
                    "%s slot %s not claimed: this master does not hold a fresh lease",
                    each.spec.key,
                    each.slot,
                )
            return []
        by_job: dict[str, list[Due]] = {}
        for each in due:
            by_job.setdefault(each.spec.key, []).append(each)
        jobs = collections.deque(by_job.values())
        won: list[Due] = []

        async def claimer() -> None:
            # A few claimers share the jobs: a task per job (1,000 at once) stood out in the profile.
            while jobs:
                won.extend(await self._claim_in_order(jobs.popleft()))

        await asyncio.gather(*(claimer() for _ in range(min(CLAIMS_IN_FLIGHT, len(jobs)))))
        claimed = {id(each) for each in won}
        return [each for each in due if id(each) in claimed]

    async def _claiming(self) -> bool:
        """May we claim? A lease that is not fresh while we still lead (a renewal out, NATS slow
        or restarting) is waited on: dropped here, the slots due meanwhile would be lost
        without a trace when the renewal lands and this scheduler goes on leading."""
        if self._may_claim():
            return True
        return self._lease_decided is not None and await self._lease_decided()

    async def _claim_in_order(self, slots: list[Due]) -> list[Due]:
        won = []
        for each in slots:
            if not await self._claiming():
                # The lease went while a burst was being claimed (its claims wait for its
                # dispatches): the rest are the next leader's, not slots we would fire refused.
                log.warning("%s slot %s not claimed: the lease is no longer held", each.spec.key, each.slot)
                continue
            if await self._claim_one(each.spec.key, each.slot, each.trigger):
                won.append(each)
                fired = self._on_claimed(each)
                if inspect.isawaitable(fired):
                    await fired  # back-pressure: the service has as many dispatches out as it allows
        return won

    async def _claim_one(self, key: str, slot: float, trigger: RunTrigger = RunTrigger.UNKNOWN) -> bool:
        """Advance the cursor to ``slot``; False if it is already there (another master fired it).

        A write NATS did not answer (cut off: nats-py buffers it and sends it on reconnect,
        after the request timed out) may still land, and a landed claim that nobody fires is a
        slot lost without a trace. So it is repeated as is, on the same connection and thus
        ordered after the first: one of them lands, the other meets a wrong last sequence and
        finds this write's nonce in the cursor. Undecided past ``UNDECIDED_BOUND``: raised.
        """
        nonce, at = secrets.token_hex(8), time.time()
        deadline = time.monotonic() + UNDECIDED_BOUND
        conflicts = 0
        while conflicts < 3:
            try:
                revision = self._revisions.get(key)
                if revision is None:
                    await self.load(key)
                    continue
                # Built at each attempt: a conflict may have added claims to carry.
                value = codec.pack(
                    {
                        "slot": slot,
                        "at": at,
                        "by": nonce,
                        "master": self._master_id,
                        "trigger": trigger.value,
                        **self._unverified(key),
                    }
                )
                try:
                    self._revisions[key] = await self._update(subjects.cursor_key(key), value, revision)
                    self._ours[key] = nonce
                    self._sending.setdefault(key, []).append(
                        InheritedSlot(key, slot, at, self._master_id, trigger)
                    )
                    return True
                except KeyWrongLastSequenceError:
                    conflicts += 1
                    current = await self._read(key, nonce)
                    if self._ours.get(key) == nonce:  # an earlier attempt of ours landed
                        self._sending.setdefault(key, []).append(
                            InheritedSlot(key, slot, at, self._master_id, trigger)
                        )
                        return True
                    if current is not None and current >= slot:
                        return False  # claimed by its writer, and inherited: audited if never run
            except Exception as exc:  # noqa: BLE001 - NATS did not say: ask again, same write
                if time.monotonic() > deadline:
                    raise ClaimUndecidedError(f"{key} slot {slot}: cursor write undecided: {exc!r}") from exc
                log.warning("%s slot %s: cursor write undecided (%r); repeating it", key, slot, exc)
                await asyncio.sleep(UNDECIDED_RETRY)
        return False

    def sent(self, key: str, slot: float) -> None:
        """The dispatch of our claim of ``slot`` has its outcome (run, or recorded): no longer carried."""
        left = [each for each in self._sending.get(key, []) if each.slot != slot]
        if left:
            self._sending[key] = left
        else:
            self._sending.pop(key, None)

    def _unverified(self, key: str) -> dict[str, Any]:
        carried = self.inherited.get(key, []) + self._sending.get(key, [])
        return {"unverified": [each.encode() for each in carried]} if carried else {}

    async def _read(self, key: str, nonce: str) -> float | None:
        """The cursor's slot (revision noted); ours if ``nonce`` wrote it, else its claims inherited."""
        try:
            entry = await self._state.get(subjects.cursor_key(key))
        except KeyNotFoundError:
            self._revisions[key] = 0
            return None
        self._revisions[key] = entry.revision or 0
        cursor = _cursor(entry.value, key)
        if cursor.get("by") == nonce:
            self._ours[key] = nonce
        return self._seen(key, cursor)


class MasterScheduler:
    """The leader's schedule: reads definitions from the job index, fires through ``fire``."""

    def __init__(
        self,
        index: JobIndex,
        state: KeyValue,
        fire: Callable[[Due], Awaitable[None] | None],
        *,
        clock: Callable[[], float] = time.time,
        may_claim: Callable[[], bool] = lambda: True,
        lease_decided: Callable[[], Awaitable[bool]] | None = None,
        js: JetStreamContext | None = None,
        master_id: str = "",
        update: Callable[[str, bytes, int], Awaitable[int]] | None = None,
    ) -> None:
        self._index = index
        # Each slot is fired as soon as its own cursor write is won (not once a whole burst's are).
        self.cursors = KvCursors(
            state,
            js=js,
            may_claim=may_claim,
            lease_decided=lease_decided,
            master_id=master_id,
            on_claimed=fire,
            update=update,
        )
        self.core = Scheduler(Schedule(master_scheduled), self.cursors, self._lookup, self._fire, clock=clock)

    @property
    def schedule(self) -> Schedule:
        return self.core.schedule

    @property
    def fired(self) -> int:
        return self.core.fired

    async def _lookup(self, key: str) -> JobSpec | None:
        return self._index.spec_if(key, _NOT_MIRROR)  # mirror jobs stay undecoded

    async def _fire(self, due: list[Due]) -> None:
        """Nothing left to do: the cursors fired each slot as its claim was won."""

    async def run(self) -> None:
        stop_listening = self._index.on_keys(self.core.changed)
        try:
            await self._index.ready.wait()  # the whole bucket, not a partial picture
            self.core.changed(list(self._index.entries))
            await self.core.run()
        finally:
            stop_listening()
