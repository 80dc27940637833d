"""Retries: a failed or timed-out run of a job with ``retries.attempts`` is run again.

Masters share one durable consumer (queue group) on the failure events, so each failure is
handled once and none is missed while a master restarts. The backoff wait is JetStream's:
the first delivery of a failure is NAKed with the delay (exponential, capped, with
jitter), and the redelivery dispatches the retry. A ``retry.<run_id>`` key created in
``natsched_state`` makes a redelivery after a crash not dispatch the retry twice: the key is
marked done once the retry was dispatched, and its run id derives from the key, so a master
that died between creating the key and sending the retry leaves a redelivery that sends it
again with the same run id (an agent that took it answers without running it again). A
load-balance retry avoids the agent that failed when another one can take it; a slave
retry goes to the same agent. The new run's event carries ``attempt`` and
``detail.retry_of``, linking the attempts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ClaimUndecidedError, CodecError, NotFoundError
from natsched.events import RunEvent, parse_event
from natsched.master.dispatch import Dispatcher
from natsched.master.following import EventFollower, follow_events
from natsched.master.jobindex import JobIndex
from natsched.master.recording import UNDECIDED_DETAIL
from natsched.models import JobSpec, Mode, RetryPolicy
from natsched.quietlog import Throttled
from natsched.vocab import NO_AGENT, RETRYABLE_STATES, RunTrigger

log = logging.getLogger(__name__)
quiet = Throttled(log)  # what a sender can cause, once per 10 s

DURABLE = subjects.RETRIES_DURABLE
SETTLE_AGAIN = 2.0  # seconds before an undecided claim is asked about again
CHAIN_DETAIL = ("chain_id", "parents", "upstream")
CHAIN_FAILURE = "chain_failure"  # a downstream run recorded failed by the chain itself: never retried


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: backoff * 2^(attempt-1), capped, +- jitter."""
    base = min(policy.max_backoff, policy.backoff * 2 ** max(0, attempt - 1))
    spread = base * policy.jitter
    jittered: float = base + (rng or random.Random()).uniform(-spread, spread)
    return max(0.0, jittered)


class RetryFollower:
    def __init__(self, nc: Client, index: JobIndex, state: KeyValue, dispatcher: Dispatcher) -> None:
        self._nc = nc
        self._index = index
        self._state = state
        self._dispatcher = dispatcher
        self.retried = 0
        self.following: EventFollower | None = None

    async def start(self) -> None:
        self.following = await follow_events(
            self._nc.jetstream(), DURABLE, RETRYABLE_STATES, self._on_failure
        )

    async def _on_failure(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception:  # a bug must not stop following; the event comes back after ack_wait
            log.exception("retry handling of %s failed", msg.subject)

    async def _handle(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data, msg.subject)
            spec = await self._index.find(event.job)
        except (CodecError, NotFoundError):
            await msg.ack()  # garbage, or the job is gone: nothing to retry
            return
        if event.attempt > spec.retries.attempts or not spec.enabled or CHAIN_FAILURE in event.detail:
            await msg.ack()
            return
        if not await self._dispatcher.directory.took(spec, event.agent, event.run_id):
            # The subject proves which agent reported the failure; one the job does not target
            # could only have forged it (and a slave retry would go to that agent).
            quiet.log(
                logging.WARNING,
                "forged",
                "ignoring failure of %s run %s from %s: not a target",
                spec.key,
                event.run_id,
                event.agent,
            )
            await msg.ack()
            return
        if msg.metadata.num_delivered <= 1:
            delay = backoff_delay(spec.retries, event.attempt)
            log.info(
                "%s run %s %s (attempt %d): retry in %.1fs",
                spec.key,
                event.run_id,
                event.state.value,
                event.attempt,
                delay,
            )
            await msg.nak(delay=delay)
            return
        went_ahead = await self._settle(event)
        if went_ahead is None:
            await msg.nak(delay=SETTLE_AGAIN)  # NATS still does not say: ask again later
            return
        if went_ahead:
            await msg.ack()
            return
        claimed = await self._claim(event)
        if claimed is not None:
            run_id, revision = claimed
            await self._retry(event, spec, run_id)
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self._state.update(
                    subjects.retry_key(event.run_id), _retry_value(event, run_id, done=True), last=revision
                )
        await msg.ack()

    async def _settle(self, event: RunEvent) -> bool | None:
        """Did a run recorded failed with an undecided claim go ahead after all (None: unknown)?

        The master that recorded it could not withdraw the run from an agent that did not
        answer; the agent may have taken it since. Withdrawing it now decides: won (or withdrawn
        before), it never runs and the retry may; lost to the agent, it ran there: no retry.
        """
        key = event.detail.get(UNDECIDED_DETAIL, "")
        if not key:
            return False
        # Only a key of this run, and of the agent whose subject the event came on (a master's
        # record of a load-balance run says agent none): no agent can withdraw another's run.
        mine = event.agent == NO_AGENT or key == subjects.agent_claim_key(event.agent, event.run_id)
        if not (subjects.is_claim_key(key) and key.endswith(f".{event.run_id}") and mine):
            log.warning("ignoring undecided claim %r of %s run %s: not its own", key, event.job, event.run_id)
            return False
        try:
            result = await self._dispatcher.withdraw(key)
        except ClaimUndecidedError as exc:
            log.warning("retry of %s waits: its claim is still undecided: %s", event.run_id, exc)
            return None
        if result.won or result.holder.withdrawn:
            return False
        log.info(
            "%s run %s was taken by %s after all (its claim was undecided): not retried",
            event.job,
            event.run_id,
            result.holder.agent,
        )
        return True

    async def _claim(self, event: RunEvent) -> tuple[str, int] | None:
        """The retry's run id and the key's revision, or None: the retry was dispatched already."""
        key = subjects.retry_key(event.run_id)
        run_id = f"{int(time.time() * 1000):x}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        try:
            return run_id, await self._state.create(key, _retry_value(event, run_id, done=False))
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._state.get(key)
            record = codec.unpack(entry.value or b"", key)
        except (KeyNotFoundError, CodecError):
            return None  # gone meanwhile, or not ours: as before, no second retry
        if record.get("done") or not isinstance(record.get("run_id"), str) or entry.revision is None:
            return None  # dispatched (a redelivery), or a key of an older master: as before
        # Claimed but not done: its master died before sending it (or is sending it now); the
        # same run id again is safe, agents run each id once.
        log.info(
            "retry of %s claimed but not recorded sent: sending %s again", event.run_id, record["run_id"]
        )
        return str(record["run_id"]), entry.revision

    async def _retry(self, event: RunEvent, spec: JobSpec, run_id: str) -> None:
        """Dispatch the retry with the definition read when the redelivery came in (from the index)."""
        mode = spec.mode
        self.retried += 1
        replies = await self._dispatcher.dispatch(
            spec,
            trigger=RunTrigger.RETRY,
            scheduled_at=event.scheduled_at,
            attempt=event.attempt + 1,
            base_id=run_id,
            only_agents=[event.agent] if mode is not Mode.LOAD_BALANCE else None,
            avoid_agents=[event.agent] if mode is Mode.LOAD_BALANCE else None,
            # A retry stays in its chain run, so the chain goes on when it succeeds.
            detail={"retry_of": event.run_id, **{k: v for k, v in event.detail.items() if k in CHAIN_DETAIL}},
        )
        for reply in replies:
            log.info(
                "%s retry of %s (attempt %d) -> %s on %s %s",
                spec.key,
                event.run_id,
                event.attempt + 1,
                reply.run_id,
                reply.agent or "-",
                "started" if reply.ok else reply.reason,
            )


def _retry_value(event: RunEvent, run_id: str, *, done: bool) -> bytes:
    return codec.pack({"attempt": event.attempt + 1, "run_id": run_id, "done": done})
