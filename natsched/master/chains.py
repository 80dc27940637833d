"""Chains: a run's completion starts the jobs whose event triggers name its job.

Masters share one durable consumer (``natsched-chains``, a queue group) on the final run
events, so each completion is handled once and none is missed while masters restart; a
message is acknowledged only after its downstream jobs were dispatched.

Chain run: the first run of a chain (or the batch of a slave run's targets) is its root,
and its id is the chain id. Every run a chain starts carries ``detail.chain_id`` and
``detail.parents`` (comma-separated run ids) — see ``natsched runs --chain``.

Exactly once per event: a downstream dispatch first creates ``chain.<job>.<upstream id>``
in ``natsched_chains`` (compare-and-set; entries expire after a week), with run ids
derived from that key. A redelivery after a crash finds the key: if the dispatch was
recorded done it is skipped; if not, it is repeated with the same run ids, and agents
answer a run id they already took without running it again.

Slave upstreams: one run per target, tied by ``detail.batch``; the batch completes when
every target's run has (``batch.<id>`` collects them), unless the downstream trigger asks
for ``per_agent`` or filters on ``agents``. Fan-in (``wait = "all"``): ``fanin.<chain>.<job>``
collects the upstreams of one chain run; when all are in, the job is dispatched; an
upstream that ended the wrong way, or the trigger's ``timeout``, fails the chain: the
master records a ``failed`` run of the downstream job saying why (never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import CodecError, ConflictError
from natsched.events import RunEvent, RunState, parse_event
from natsched.master.chainstate import ChainRecords
from natsched.master.dispatch import Dispatcher
from natsched.master.fanins import FanInTimeouts, timed_out
from natsched.master.following import EventFollower, follow_events
from natsched.master.holding import HeldRun, Holding
from natsched.master.jobindex import JobIndex
from natsched.master.lost import starts_again
from natsched.master.recording import publish_event
from natsched.master.retries import CHAIN_FAILURE
from natsched.models import JobSpec
from natsched.quietlog import Throttled
from natsched.triggers.event import EventTrigger
from natsched.vocab import COMPLETED_STATES, NO_AGENT, RunTrigger

log = logging.getLogger(__name__)
quiet = Throttled(log)  # what a sender can cause, once per 10 s

DURABLE = subjects.CHAINS_DURABLE


@dataclass(frozen=True, slots=True)
class Completion:
    """An upstream job that completed: one run, or every run of a slave batch."""

    job: str
    id: str  # the run id, or the batch id
    state: RunState  # for a batch: succeeded if every run did, else failed
    exit_codes: tuple[int | None, ...]
    agent: str  # empty for a batch
    runs: tuple[str, ...]
    at: float  # when it completed (the agent's event time; for a batch its last member's)

    def satisfies(self, trigger: EventTrigger) -> bool:
        if trigger.exit_codes:
            return all(code is not None and code in trigger.exit_codes for code in self.exit_codes)
        # A batch reaches here only for triggers without an agents filter (see handle).
        return trigger.accepts(self.state, None, self.agent)


def retry_follows(index: JobIndex, event: RunEvent) -> bool:
    """Will the retry follower run this failed run again (so the chain waits for that)?"""
    spec = index.jobs.get(event.job)
    return (
        spec is not None
        and spec.enabled
        and event.attempt <= spec.retries.attempts
        and CHAIN_FAILURE not in event.detail
    )


def derived_run_id(claim: str, first_parent: str) -> str:
    """A run id that is the same on every redelivery: parent's time prefix + hash of the claim."""
    prefix = first_parent.split("-", 1)[0]
    try:
        int(prefix, 16)
    except ValueError:
        prefix = f"{int(time.time() * 1000):x}"
    return f"{prefix}-{hashlib.sha256(claim.encode()).hexdigest()[:12]}"


class ChainFollower:
    def __init__(
        self,
        nc: Client,
        chains: KeyValue,
        index: JobIndex,
        dispatcher: Dispatcher,
        holding: Holding,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._records = ChainRecords(chains)
        self._index = index
        self._dispatcher = dispatcher
        self._holding = holding
        self._clock = clock
        # The masters' service runs fanins.watch and fanins.expire.
        self.fanins = FanInTimeouts(
            self._js, self._records, index, self._fail_chain, durable=DURABLE, clock=clock
        )
        self.dispatched = 0
        self.following: EventFollower | None = None

    async def start(self) -> None:
        self.following = await follow_events(self._js, DURABLE, COMPLETED_STATES, self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        try:
            await self._index.ready.wait()
            job = subjects.event_job(msg.subject)
            if job is not None and not self._index.downstream(job):
                await msg.ack()  # most completions start nothing: not worth decoding
                return
            await self.handle(parse_event(msg.data, msg.subject))
        except CodecError:
            pass  # garbage is no completion
        except Exception:  # a bug or NATS hiccup: the event comes back after ack_wait
            log.exception("chain handling of %s failed", msg.subject)
            return
        await msg.ack()

    async def handle(self, event: RunEvent) -> None:
        downstream = self._index.downstream(event.job)
        if not downstream or (event.state.retryable and retry_follows(self._index, event)):
            return  # nothing follows, or a retry will: the chain waits for the last attempt
        if event.state is RunState.LOST and await starts_again(self._dispatcher, self._index, event):
            # Started again elsewhere, in the same chain (lost.py): that run's end is the
            # upstream's. Taken for one, the loss ran an "on = completed" job twice and
            # failed a fan-in whose upstream then succeeded. A lost run not started again (no
            # master handed it there, as far as the record goes) ends the upstream's run here.
            return
        upstream = self._index.jobs.get(event.job)
        if upstream is None or not await self._dispatcher.directory.took(upstream, event.agent, event.run_id):
            quiet.log(
                logging.WARNING,
                "forged",
                "completion %s of %s on %s ignored: the job does not target that agent",
                event.run_id,
                event.job,
                event.agent,
            )
            return
        chain_id = event.detail.get("chain_id") or event.detail.get("batch") or event.run_id
        single = Completion(
            job=event.job,
            id=event.run_id,
            state=event.state,
            exit_codes=(event.exit_code,),
            agent=event.agent,
            runs=(event.run_id,),
            at=event.at,
        )
        in_batch = int(event.detail.get("batch_size", "1") or 1) > 1 and "batch" in event.detail
        per_batch = [(s, t) for s, t in downstream if in_batch and not (t.per_agent or t.agents)]
        # Each downstream job at once: one whose agent is slow to answer (up to the dispatch
        # timeout) holds back none of the others.
        await _all(
            self._upstream_done(s, t, chain_id, single) for s, t in downstream if (s, t) not in per_batch
        )
        if per_batch:
            whole = await self._batch_member(event)
            if whole is not None:  # else: other targets still running
                await _all(self._upstream_done(s, t, chain_id, whole) for s, t in per_batch)

    async def _batch_member(self, event: RunEvent) -> Completion | None:
        """Record one target's completion; the whole batch's Completion once all are in."""
        batch, size = event.detail["batch"], int(event.detail["batch_size"])
        key = subjects.chain_batch_key(batch)
        members: dict[str, Any] = {}
        for _ in range(20):
            record, revision = await self._records.read(key)
            members = record.setdefault("members", {})
            members[event.agent] = [event.run_id, event.state.value, event.exit_code, event.at]
            if await self._records.write(key, record, revision):
                break
        else:
            raise ConflictError(f"{key}: too many concurrent updates")
        if len(members) < size:
            return None
        states = [m[1] for m in members.values()]
        return Completion(
            job=event.job,
            id=batch,
            state=RunState.SUCCEEDED if all(s == RunState.SUCCEEDED for s in states) else RunState.FAILED,
            exit_codes=tuple(m[2] for m in members.values()),
            agent="",
            runs=tuple(sorted(m[0] for m in members.values())),
            at=max(float(m[3]) if len(m) > 3 else event.at for m in members.values()),
        )

    async def _upstream_done(
        self, spec: JobSpec, trigger: EventTrigger, chain_id: str, completion: Completion
    ) -> None:
        ok = completion.satisfies(trigger)
        if trigger.wait == "any" or len(trigger.after) == 1:
            if ok:
                # One upstream: once per completion. Any of several: once per chain run.
                claim_id = completion.id if len(trigger.after) == 1 else chain_id
                await self._fire(spec, chain_id, completion.runs, completion.job, claim_id=claim_id)
            return
        key = subjects.chain_fanin_key(chain_id, spec.key)
        for _ in range(20):
            pending, revision = await self._records.read(key)
            if revision is None and await self._records.exists(subjects.chain_claim_key(spec.key, chain_id)):
                return  # already fired or failed for this chain run (a redelivery)
            if not ok:
                # Recorded (claimed) before the progress is dropped, as a join is (see below).
                waiting = f"{completion.job} ended {completion.state}"
                await self._fail_chain(
                    spec,
                    chain_id,
                    completion.runs,
                    f"chain failed: {waiting}, but it waits for all of "
                    f"{', '.join(trigger.after)} to end {trigger.on}",
                )
                await self._records.delete(key, revision)
                return
            # The timeout runs from the first upstream's completion, not from when a master
            # handled it: a redelivery after a master crash counts if it completed in time.
            first_at = min(float(pending.get("first_at", completion.at)), completion.at)
            pending["first_at"], pending["deadline"] = first_at, first_at + trigger.timeout
            upstreams: dict[str, list[str]] = pending.setdefault("upstreams", {})
            if completion.at > pending["deadline"]:
                parents = tuple(r for runs in upstreams.values() for r in runs) + completion.runs
                await self._fail_chain(spec, chain_id, parents, timed_out(trigger, upstreams))
                await self._records.delete(key, revision)
                return
            upstreams[completion.job] = list(completion.runs)
            if set(upstreams) >= set(trigger.after):
                # Claimed (in _fire) before the progress is dropped: a master that dies in between
                # leaves the progress, so the redelivered completion completes the fan-in again and
                # the claim makes that a repeat of the same runs (dropped first, it left nothing).
                # The claim also decides between this and a timeout's failure (_fail_chain).
                parents = tuple(r for job in trigger.after for r in upstreams[job])
                await self._fire(spec, chain_id, parents, ",".join(trigger.after), claim_id=chain_id)
                await self._records.delete(key, revision)  # a conflict: another master's, about to go
                return
            if await self._records.write(key, pending, revision):
                return
        raise ConflictError(f"{key}: too many concurrent updates")

    async def _fire(
        self, spec: JobSpec, chain_id: str, parents: tuple[str, ...], upstream: str, *, claim_id: str
    ) -> None:
        claim = subjects.chain_claim_key(spec.key, claim_id)
        try:  # the common case first: nobody claimed it (one write, no read)
            revision: int | None = await self._records.bucket.create(claim, codec.pack({"at": self._clock()}))
        except KeyWrongLastSequenceError:
            record, revision = await self._records.read(claim)
            if record.get("done") or record.get("failed") or revision is None:
                return  # dispatched already (a redelivery), the chain failed, or expired
            # Claimed but not recorded done: the claimer crashed mid-dispatch (or is in it right
            # now); dispatching again with the same run ids is safe, agents run each id once.
        base = derived_run_id(claim, parents[0] if parents else chain_id)

        detail = {"chain_id": chain_id, "parents": ",".join(parents), "upstream": upstream}

        async def dispatch() -> None:
            replies = await self._dispatcher.dispatch(
                spec, trigger=RunTrigger.EVENT, base_id=base, detail=detail
            )
            self.dispatched += 1
            for reply in replies:
                log.info(
                    "chain %s: %s -> %s %s on %s",
                    chain_id,
                    upstream,
                    spec.key,
                    "started" if reply.ok else reply.reason,
                    reply.agent or "-",
                )

        held = HeldRun(trigger=RunTrigger.EVENT, base_id=base, detail=detail)
        if await self._holding.admit(spec, held):
            await dispatch()
        with contextlib.suppress(KeyWrongLastSequenceError):
            done = codec.pack({"at": self._clock(), "done": True})
            await self._records.bucket.update(claim, done, last=revision)

    async def _fail_chain(self, spec: JobSpec, chain_id: str, parents: tuple[str, ...], reason: str) -> None:
        """Claim the chain run's outcome as failed (the claim decides between this and a join),
        record it, then mark the claim done: a master that dies before the record leaves a claim
        the next one finishes (the fan-in's progress is dropped only after this)."""
        claim = subjects.chain_claim_key(spec.key, chain_id)
        try:
            revision: int | None = await self._records.bucket.create(
                claim, codec.pack({"at": self._clock(), "failed": reason})
            )
        except KeyWrongLastSequenceError:
            record, revision = await self._records.read(claim)
            if record.get("done") or not record.get("failed") or revision is None:
                return  # joined, or its failure recorded already
            reason = str(record["failed"])  # claimed failed, not recorded: finish it
        event = RunEvent(
            run_id=derived_run_id(claim, parents[0] if parents else chain_id),
            job=spec.key,
            agent=NO_AGENT,
            state=RunState.FAILED,
            trigger=RunTrigger.EVENT,
            reason=reason,
            detail={"chain_id": chain_id, "parents": ",".join(parents), CHAIN_FAILURE: "1"},
        )
        log.warning("chain %s: %s", chain_id, reason)
        await publish_event(self._js, event)  # its id derives from the claim: a repeat lands once
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._records.bucket.update(
                claim, codec.pack({"at": self._clock(), "failed": reason, "done": True}), last=revision
            )


async def _all(steps: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run every step concurrently, each to its end; then raise the first failure (the event
    comes back, and the claims make the steps that did fire not fire again)."""
    failures = [
        r for r in await asyncio.gather(*steps, return_exceptions=True) if isinstance(r, BaseException)
    ]
    if failures:
        raise failures[0]
