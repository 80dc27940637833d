"""Sending runs to agents: slave (every target) and load-balance (one agent of a pool).

Slave: one request per target on ``natsched.agent.<agent>.run``, all in parallel. An
agent that does not answer (``NoRespondersError`` still after 350 ms of asking again, or a
timeout) gets a ``failed`` event with reason ``agent offline``; the others run regardless.

Load-balance, the selection rule: the candidates are the *live* agents (a heartbeat in
``natsched_agents``) of the job's pools that are below their max concurrency. With
``balance = "priority"`` they are tried in the order of the job's ``targets.agents``
(the failover list), then by the agents' own ``priority`` (lower first), then name.
With ``balance = "load" | "cpu" | "memory" | "running"`` the least loaded by that measure
goes first (load average, CPU %, memory %, running count). The first agent that accepts
gets the run; one that refuses (busy) or is unreachable passes it to the next. When the
list is exhausted, the pool's queue group ``natsched.pool.<pool>.run`` is the last resort
(any agent of the pool may take it, heartbeat or not); then the run fails with the
reasons.

An agent starts a run only once it has won the run's claim (``natsched/claims.py``).
When an agent does not answer within the timeout, the master claims the run itself (a
withdrawal) before it records the run failed or asks the next agent; if the agent won
instead, its answer was only late: the run is taken there and asked of nobody else. So a
dispatch the master gave up on never executes, and a load-balance run executes once.

At most ``REQUESTS_PER_TARGET`` (256) requests are out to one agent or pool at once
(``window.py``): a burst's later requests wait in the master, their timeout not yet running.

Overlap of a load-balance job is cluster-wide (a lock in ``natsched_state``, held by the
running run; see ``agent/locks.py``). For ``replace`` the master cancels the holder
wherever it runs before dispatching; the new run waits on its agent for the lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.claims import ClaimResult, claim, open_claims
from natsched.errors import ClaimUndecidedError, CodecError
from natsched.events import RunState, new_run_id
from natsched.locking import read_holder
from natsched.master.accepted import AcceptedRuns
from natsched.master.directory import AgentDirectory, load_balance_order, slave_targets
from natsched.master.lease import LeaderLease
from natsched.master.offers import note_offer, note_taker, offer
from natsched.master.recording import record_failure
from natsched.master.replies import Requester
from natsched.master.window import RequestWindows
from natsched.models import Heartbeat, JobSpec, Mode, Overlap
from natsched.runmessages import RunReply, RunRequest, decode_run_reply
from natsched.subjects import lock_key
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
OFFLINE = "agent offline"  # no responder on the agent's subject: nobody got the request
UNHEARD_RETRIES = 3  # a slave target nobody listens to is asked again 3 times, 350 ms in all
UNHEARD_WAIT = 0.05


class Dispatcher:
    def __init__(
        self,
        nc: Client,
        *,
        master_id: str,
        directory: AgentDirectory | None = None,
        timeout: float = REQUEST_TIMEOUT,
        lease: LeaderLease | None = None,
        windows: RequestWindows | None = None,
    ) -> None:
        self._lease = lease
        self.on_dispatch: Callable[[float], None] = lambda seconds: None  # e.g. a metrics histogram
        self._nc = nc
        self._js = nc.jetstream()
        self._master_id = master_id
        self.directory = directory or AgentDirectory(nc)
        self.accepted = AcceptedRuns()  # until their own events are on record (for lost agents)
        self._timeout = timeout
        self._claims: KeyValue | None = None
        self.windows = windows or RequestWindows()  # run requests out to each agent at once
        self.requests = Requester(nc)  # also the leader's cursor writes (KvUpdates)

    async def live_agents(self) -> list[Heartbeat]:
        return await self.directory.live()

    async def dispatch(
        self,
        spec: JobSpec,
        *,
        trigger: RunTrigger,
        scheduled_at: float | None = None,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        correlation_id: str = "",
        attempt: int = 1,
        only_agents: list[str] | None = None,
        avoid_agents: list[str] | None = None,
        detail: Mapping[str, str] | None = None,
        base_id: str | None = None,
    ) -> list[RunReply]:
        """Start ``spec`` now on its agents; one reply per run (failed ones say why).

        ``base_id`` makes the run ids deterministic (``base_id`` for a load-balance run,
        ``<base_id>-<agent>`` per target otherwise), so a dispatch repeated after a crash
        is recognised by the agents (they answer a run id they know without running it
        again). Several targets get ``detail.batch`` and ``detail.batch_size``: a chain
        treats them as one completion.
        """
        started = time.perf_counter()
        try:

            def request(run_id: str, extra: Mapping[str, str] | None = None) -> RunRequest:
                return RunRequest(
                    run_id=run_id,
                    spec=spec,
                    trigger=trigger,
                    scheduled_at=scheduled_at,
                    attempt=attempt,
                    args=args,
                    env=dict(env or {}),
                    correlation_id=correlation_id,
                    master=self._master_id,
                    detail={**(detail or {}), **(extra or {})},
                    term=self._lease.term if self._lease else 0,
                )

            live = await self.live_agents()
            if spec.mode is Mode.LOAD_BALANCE:
                run = request(base_id or new_run_id())
                return [
                    await self._dispatch_one(spec, run, live, avoid_agents, repeatable=base_id is not None)
                ]
            targets = only_agents if only_agents is not None else slave_targets(spec, live)
            return await self._dispatch_each(spec, targets, request, base_id)
        finally:
            self.on_dispatch(time.perf_counter() - started)

    async def _dispatch_one(
        self,
        spec: JobSpec,
        run: RunRequest,
        live: list[Heartbeat],
        avoid: list[str] | None,
        *,
        repeatable: bool,
    ) -> RunReply:
        """Load-balance: the run goes to the first agent of the pool that takes it."""
        if spec.overlap is Overlap.REPLACE:
            await self._cancel_lock_holder(spec)
        reply = await self._load_balance(spec, run, live, avoid=avoid or [], repeatable=repeatable)
        self.accepted.note(run, reply)
        if reply.ok and reply.agent:
            self.directory.note_started(reply.agent)
        return reply

    async def _dispatch_each(
        self,
        spec: JobSpec,
        targets: list[str],
        request: Callable[[str, Mapping[str, str] | None], RunRequest],
        base_id: str | None,
    ) -> list[RunReply]:
        """Slave: one run per target, all asked at once; a target that fails gets a failed event."""
        if not targets:
            return [RunReply(ok=False, agent="", reason="no live agent matches the job's targets")]
        refused = {
            name: self.directory.incompatible[name] for name in targets if name in self.directory.incompatible
        }
        batch = (
            {"batch": base_id or new_run_id(), "batch_size": str(len(targets))} if len(targets) > 1 else {}
        )
        requests = {
            name: request(f"{base_id}-{name}" if base_id else new_run_id(), batch) for name in targets
        }
        asks = [
            self._refuse(requests[name], name, refused[name])
            if name in refused
            else self._ask(_Target.of_agent(name), requests[name], unheard_retries=UNHEARD_RETRIES)
            for name in targets
        ]
        # One target (most slave jobs) is awaited directly: gather would wrap it in a task.
        replies = [await asks[0]] if len(asks) == 1 else await asyncio.gather(*asks)
        for name, reply in zip(targets, replies, strict=True):
            self.accepted.note(requests[name], reply)
            if reply.ok:
                self.directory.note_started(name)
        failed = [
            (
                requests[name],
                reply,
                _unsettled(reply, _Target.of_agent(name).claim_key(requests[name].run_id)),
            )
            for name, reply in zip(targets, replies, strict=True)
            if not reply.ok
        ]
        if failed:
            await asyncio.gather(
                *(record_failure(self._js, req, reply, undecided=key) for req, reply, key in failed)
            )
        return list(replies)

    async def _load_balance(
        self, spec: JobSpec, request: RunRequest, live: list[Heartbeat], *, avoid: list[str], repeatable: bool
    ) -> RunReply:
        """``repeatable``: the run id may be sent again (derived from what started the run), maybe
        to another agent: each target is made the run's only open offer first (``offers.py``)."""
        reasons: list[str] = []
        undecided = ""
        order = load_balance_order(spec, live, self.directory.sent)
        # A retry goes to another agent when there is one; the one that failed comes last.
        order = [a for a in order if a not in avoid] + [a for a in order if a in avoid]
        targets = [_Target.of_agent(a) for a in order] + [_Target.of_pool(p) for p in spec.targets.pools]
        for first, target in zip([True] + [False] * len(targets), targets, strict=False):
            taken = None
            if repeatable or not first:
                taken = await self._offer(target, request.run_id)
                reply = taken or await self._ask(target, request)
            else:  # a fresh id: nothing to settle, the record goes with the request
                reply = await self._ask_noted(target, request)
            if reply.ok and target.is_pool and taken is None:
                await self._note_taker(target, request.run_id, reply.agent)
            if reply.ok or reply.state == RunState.SKIPPED.value:  # skipped by overlap: final
                return reply
            reasons.append(f"{target.who}: {reply.reason}")
            if reply.reason.startswith(UNDECIDED):
                undecided = _unsettled(reply, target.claim_key(request.run_id))
                break  # the run may still start there: offering it elsewhere could run it twice
        failed = RunReply(
            ok=False,
            agent="",
            run_id=request.run_id,
            reason="no agent accepted the run (" + "; ".join(reasons) + ")",
        )
        await record_failure(self._js, request, failed, undecided=undecided)
        return failed

    async def _ask_noted(self, target: _Target, request: RunRequest) -> RunReply:
        """Ask ``target``, recording the offer meanwhile (``offers.note_offer``): the masters'
        word that the run went there, should the agent be lost with it."""
        run_id = request.run_id

        async def note() -> None:
            try:
                await note_offer(await self._claims_kv(), run_id, target.claim_key(run_id))
            except Exception as exc:  # noqa: BLE001 - the run goes ahead; only a lost re-run is at stake
                log.warning(
                    "run %s: offer to %s not recorded (%r): if lost, it is not started again",
                    run_id,
                    target.who,
                    exc,
                )

        _, reply = await asyncio.gather(note(), self._ask(target, request))
        return reply

    async def _note_taker(self, target: _Target, run_id: str, agent: str) -> None:
        """The member of the pool that answered it took the run: the offer record says so
        (``offers.note_taker``), not the pool claim, which every member of the pool may write."""
        try:
            await note_taker(await self._claims_kv(), run_id, target.claim_key(run_id), agent)
        except Exception as exc:  # noqa: BLE001 - the run goes ahead; only a lost re-run is at stake
            log.warning(
                "run %s: taker %s not recorded (%r): if lost, it is not started again", run_id, agent, exc
            )

    async def _offer(self, target: _Target, run_id: str) -> RunReply | None:
        """None: ask ``target`` now. Else the run was taken by an earlier offer, or is undecided."""
        try:
            result = await offer(
                await self._claims_kv(), run_id, target.claim_key(run_id), master=self._master_id
            )
        except ClaimUndecidedError as exc:
            log.error("run %s: not offered to %s: %s", run_id, target.who, exc)
            return RunReply(ok=False, agent=target.who, run_id=run_id, reason=f"{UNDECIDED}: {exc}")
        if not result.taken_by:
            return None
        log.info(
            "run %s: taken by %s from an earlier dispatch; not offered to %s",
            run_id,
            result.taken_by,
            target.who,
        )
        return RunReply(
            ok=True,
            agent=result.taken_by,
            run_id=run_id,
            reason=f"taken by {result.taken_by} (dispatched before)",
        )

    async def withdraw(self, key: str) -> ClaimResult:
        """Claim ``key`` for this master: won (or withdrawn before), nobody can take the run."""
        return await claim(await self._claims_kv(), key, master=self._master_id)

    async def claims(self) -> KeyValue:
        """The claims bucket (run claims, offers, pool and tag proofs)."""
        return await self._claims_kv()

    async def _claims_kv(self) -> KeyValue:
        if self._claims is None:
            self._claims = await open_claims(self._js)
        return self._claims

    async def _refuse(self, request: RunRequest, agent: str, reason: str) -> RunReply:
        """Not sent: the agent speaks another protocol version (it would misread the request)."""
        return RunReply(ok=False, agent=agent, run_id=request.run_id, reason=reason)

    async def _cancel_lock_holder(self, spec: JobSpec) -> None:
        """``overlap = "replace"``: stop the job's running run, on whichever agent it runs."""
        state = await self._js.key_value(subjects.STATE_BUCKET)
        try:
            entry = await state.get(lock_key(spec.key))
        except KeyNotFoundError:
            return
        holder = read_holder(entry.value)
        if not subjects.is_token(holder.agent):
            return
        try:
            msg = await self._nc.request(
                subjects.agent_cancel_subject(holder.agent),
                codec.pack({"run_id": holder.run_id}),
                timeout=self._timeout,
            )
            log.info(
                "replace %s: cancel of %s answered %s", spec.key, holder, codec.unpack(msg.data, "cancel")
            )
        except (NoRespondersError, NatsTimeoutError, CodecError) as exc:
            # A holder whose agent is gone loses the lock once its heartbeat expires.
            log.warning("replace %s: could not cancel %s: %r", spec.key, holder, exc)

    async def _ask(self, target: _Target, request: RunRequest, *, unheard_retries: int = 0) -> RunReply:
        """``unheard_retries``: ask again (after 50 ms, then 100 ms ...) while nobody listens on
        the target's subject. A slave target has no other agent to go to, and an agent that
        just started heartbeats (its name taken) a few ms before it subscribes; in a cluster
        its interest also takes a moment to reach the master's server. Nobody got the request,
        so asking again cannot run it twice."""
        reply = await self._ask_once(target, request)
        for attempt in range(unheard_retries):
            if reply.reason != OFFLINE:
                break
            await asyncio.sleep(UNHEARD_WAIT * 2**attempt)
            reply = await self._ask_once(target, request)
        if reply.reason.startswith("stale master") and self._lease is not None and not _leader_work(request):
            # Our view of the term was old (e.g. just after a change of leader): re-read, once.
            # Scheduled slots are the leader's work: a deposed leader's are refused, not retried.
            term = await self._lease.refresh()
            if term > request.term:
                reply = await self._ask_once(target, replace(request, term=term))
        return reply

    async def _ask_once(self, target: _Target, request: RunRequest) -> RunReply:
        who = target.who
        payload = request.encode()
        await self.windows.enter(target.subject)  # its timeout runs from the send, not the wait
        try:
            msg: Msg | None = await self.requests.request(target.subject, payload, self._timeout)
        except NoRespondersError:  # nobody subscribed, so nobody got it: nothing to withdraw
            return RunReply(ok=False, agent=who, run_id=request.run_id, reason=OFFLINE)
        except NatsTimeoutError:
            msg = None
        finally:
            self.windows.leave(target.subject)
        if msg is None:
            return await self._withdraw(target, request)
        try:
            return decode_run_reply(msg.data)
        except CodecError as exc:
            return RunReply(ok=False, agent=who, run_id=request.run_id, reason=f"bad reply: {exc}")

    async def _withdraw(self, target: _Target, request: RunRequest) -> RunReply:
        """No answer in time: claim the run ourselves, so that a late agent cannot start it."""
        who, silent = target.who, f"agent offline (no answer within {self._timeout:g}s)"
        key = target.claim_key(request.run_id)
        try:
            result = await self.withdraw(key)
        except Exception as exc:  # noqa: BLE001 - any failure leaves it undecided
            log.error("run %s: %s, and its claim %s is undecided: %r", request.run_id, silent, key, exc)
            return RunReply(
                ok=False, agent=who, run_id=request.run_id, reason=f"{UNDECIDED} ({silent}): {exc}"
            )
        holder = result.holder
        if result.won or holder.withdrawn:
            return RunReply(ok=False, agent=who, run_id=request.run_id, reason=f"{silent}; withdrawn")
        log.info("run %s: %s's answer came late, but it took the run", request.run_id, holder.agent)
        late = f"taken by {holder.agent} (late answer)"
        return RunReply(ok=True, agent=holder.agent, run_id=request.run_id, reason=late)


UNDECIDED = "claim undecided"
# Our own withdrawal got no answer (the agent did not answer either): it may still take the run.
UNSETTLED = f"{UNDECIDED} ({OFFLINE}"


def _unsettled(reply: RunReply, claim_key: str) -> str:
    """The claim key to settle later when ``reply`` is our undecided withdrawal, else ''."""
    return claim_key if reply.reason.startswith(UNSETTLED) else ""


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a run request goes, and the claim key that decides whether it runs there."""

    subject: str
    who: str
    name: str
    is_pool: bool = False

    @classmethod
    def of_agent(cls, name: str) -> _Target:
        return cls(subjects.agent_run_subject(name), name, name)

    @classmethod
    def of_pool(cls, pool: str) -> _Target:
        return cls(subjects.pool_run_subject(pool), f"pool {pool}", pool, is_pool=True)

    def claim_key(self, run_id: str) -> str:
        if self.is_pool:
            return subjects.pool_claim_key(self.name, run_id)
        return subjects.agent_claim_key(self.name, run_id)


def _leader_work(request: RunRequest) -> bool:
    return request.trigger.scheduled
