"""Answering the master: run requests (slave and load-balance dispatch) and cancels.

The reply goes out as soon as the process has *started* (with its pid), not when it
ends; the end is an event like any other. An agent at its ``max_concurrency`` refuses,
so the master (or the pool's queue group) tries the next agent. Garbage gets an error
reply and is logged; it never takes the agent down. A request for a run id this agent
already took (a master repeating a dispatch after a crash) gets the first answer again
and runs nothing.

Nothing starts before the agent has won the run's claim (``natsched/claims.py``): a
dispatch the master gave up on (it withdrew the claim first) is refused, however late
it arrives, e.g. after the agent was frozen (SIGSTOP) past the dispatch timeout.

Stopping answers what is already on its way: the subscriptions are drained, so a request the
server sent before it read the unsubscribe still gets its answer (see ``_refusal``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from agent.executor import JobExecutor
from agent.fencing import TermFence
from agent.nameguard import NameGate
from agent.prepare import Prepared, first_event
from natsched import codec, subjects
from natsched.claims import ClaimedRun, claim, open_claims
from natsched.connection import dropped_for_its_reply, subscribe_inbound, unsubscribe_draining
from natsched.errors import CodecError, TriggerRefusedError
from natsched.events import RunState
from natsched.models import Mode
from natsched.quietlog import Throttled
from natsched.runmessages import RunReply, RunRequest, decode_run_request

log = logging.getLogger(__name__)
quiet = Throttled(log)  # a flood of bad run requests is not a line each
RECENT_RUNS = 10_000  # run ids remembered for answering a repeated dispatch
RESYNC_TIMEOUT = 30.0  # natsched sync: how long an agent may take to catch up with the bucket
DRAIN_WAIT = 2.0  # seconds stop() waits for the server to confirm its unsubscribes (a flush)
STOP_WAIT = 3.0  # then, seconds stop() waits for run requests being handled
STOPPING = "agent stopping"  # refusing a load-balance run offered by name while stopping
MAX_HANDLING = 256  # run requests handled at once (each waits on its claim)


class Responder:
    def __init__(
        self,
        nc: Client,
        executor: JobExecutor,
        *,
        agent: str,
        pools: frozenset[str],
        max_concurrency: int,
        sync_report: Callable[[], dict[str, Any]] | None = None,
        local_report: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        resync: Callable[[bool, float], Awaitable[dict[str, Any]]] | None = None,
        gate: NameGate | None = None,
    ) -> None:
        self._gate = gate or NameGate()
        self._in_flight = 0  # run requests being handled: stop() lets them finish
        self._handling: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_HANDLING)
        self._starting = 0  # requests past the busy check, not launched yet
        self._drained = asyncio.Event()
        self._drained.set()
        self._stopping = False  # stop() has begun: see _refusal
        self._nc = nc
        self._executor = executor
        self._agent = agent
        self._pools = pools
        self._max = max_concurrency
        self._subs: list[Subscription] = []
        self._recent: OrderedDict[str, RunReply] = OrderedDict()
        self.sync_report = sync_report or (lambda: {"agent": agent, "report": []})
        self.local_report = local_report  # agent-local jobs, when the agent has a jobs_dir
        # `natsched sync`: re-read the bucket now (full or not), within a timeout.
        self.resync = resync
        self._resyncs: set[asyncio.Task[None]] = set()
        self.fence = TermFence(nc.jetstream())  # the leader's term, from the lease
        self._claims: KeyValue | None = None

    async def start(self) -> None:
        self._stopping = False
        # Bounded queues (connection.subscribe_inbound): a master gone wrong, or an admin's
        # sync requests, cannot grow this agent's memory without limit; what overflows is
        # dropped (a run request then times out at the master, which withdraws it).
        self._subs.append(
            await subscribe_inbound(
                self._nc, subjects.agent_run_subject(self._agent), cb=self._serve_runs(None)
            )
        )
        self._subs.append(
            await subscribe_inbound(self._nc, subjects.agent_cancel_subject(self._agent), cb=self._on_cancel)
        )
        self._subs.append(
            await subscribe_inbound(self._nc, subjects.agent_sync_subject(self._agent), cb=self._on_sync)
        )
        for pool in sorted(self._pools):
            self._subs.append(
                await subscribe_inbound(
                    self._nc,
                    subjects.pool_run_subject(pool),
                    queue=subjects.pool_queue(pool),
                    cb=self._serve_runs(pool),
                )
            )

    async def stop(self) -> None:
        self._stopping = True
        subs, self._subs = self._subs, []
        # Drained, not just unsubscribed: a run request the server sent before it read our
        # unsubscribe is answered (taken, or refused at once), not dropped for the master to
        # wait out its dispatch timeout and withdraw (a slave run was recorded failed so).
        await unsubscribe_draining(self._nc, subs, DRAIN_WAIT)
        for task in list(self._resyncs):  # after the drain: one asked meanwhile goes too
            task.cancel()
        # A request claimed but not yet launched would otherwise be refused by the stopping
        # executor, its failed event queued after the outbox's last flush: never recorded.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_WAIT):
                await self._drained.wait()
        for task in list(self._handling):  # past the bound (NATS gone): nothing outlives stop()
            task.cancel()
        await asyncio.gather(*self._handling, return_exceptions=True)

    async def _reply(self, msg: Msg, reply: RunReply) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, reply.encode())

    async def _refuse(self, msg: Msg, request: RunRequest, reason: str) -> None:
        await self._reply(msg, RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=reason))

    def _serve_runs(self, pool: str | None) -> Callable[[Msg], Awaitable[None]]:
        """Run requests on this agent's subject (``pool`` None) or on a pool's queue group."""

        async def on_run(msg: Msg) -> None:
            if dropped_for_its_reply(msg, reply_required=True):
                return
            # Each request in its own task: a subscription's callbacks run one after another,
            # and a request waits on its claim (a KV round trip) before its spawn. Handled in
            # line, every run request waited for the previous one's claim and spawn.
            await self._slots.acquire()  # back-pressure: the subscription waits when all are busy
            self._in_flight += 1
            self._drained.clear()
            task = asyncio.create_task(self._handle(msg, pool), name="run-request")
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

        return on_run

    async def _handle(self, msg: Msg, pool: str | None) -> None:
        try:
            await self._on_run(msg, pool)
        except Exception:  # noqa: BLE001 - a bug must not leave a task's exception unretrieved
            log.exception("run request on %s failed", msg.subject)
        finally:
            self._slots.release()
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    def _refusal(self, request: RunRequest, pool: str | None) -> str:
        """Why this agent does not take ``request`` now ("" when it does)."""
        if self._stopping and request.spec.mode is Mode.LOAD_BALANCE and pool is None:
            # Offered by name while this agent stops (the server sent it before our unsubscribe):
            # the master asks the pool's next agent at once, where the run is not cut short by
            # this agent's shutdown grace. A slave run, or one from the pool's queue group (the
            # master's last resort), has nowhere else to go: refused, it would be recorded
            # failed, so it is taken as before (the executor stops accepting only after this).
            return STOPPING
        if request.spec.mode is Mode.LOAD_BALANCE:
            # Refused, not held (manual runs too): another agent of the pool takes it.
            paused = self._executor.holds().agent_hold(self._agent)[1]
            if paused:
                return paused
        if self._executor.running + self._starting >= self._max:
            return f"busy: {self._executor.running + self._starting}/{self._max} runs"
        return ""

    async def _claim(self, request: RunRequest, pool: str | None) -> RunReply | None:
        """Win the run's claim, or say why not (the reply); None when this agent may start it."""
        key = (
            subjects.pool_claim_key(pool, request.run_id)
            if pool
            else subjects.agent_claim_key(self._agent, request.run_id)
        )
        try:
            if self._claims is None:
                self._claims = await open_claims(self._nc.jetstream())
            run = ClaimedRun.of(
                request.spec.key, request.trigger.value, request.scheduled_at, request.attempt, request.detail
            )  # the run's only record if this agent dies before its first event is out
            result = await claim(self._claims, key, agent=self._agent, run=run)
        except Exception as exc:  # noqa: BLE001 - undecided: run nothing, say why
            log.warning("run %s not started: claim %s undecided: %r", request.run_id, key, exc)
            return RunReply(
                ok=False, agent=self._agent, run_id=request.run_id, reason=f"claim undecided: {exc}"
            )
        if result.won:
            return None
        holder = result.holder
        log.warning("run %s not started here: it was %s", request.run_id, holder.describe())
        if holder.withdrawn:
            return RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=holder.describe())
        # Taken already (by us before a restart, or by another member of the pool): it runs there.
        return RunReply(ok=True, agent=holder.agent, run_id=request.run_id, reason=holder.describe())

    async def _on_run(self, msg: Msg, pool: str | None) -> None:
        try:
            request = decode_run_request(msg.data)
        except CodecError as exc:
            quiet.log(logging.WARNING, "bad request", "bad run request on %s: %s", msg.subject, exc)
            await self._reply(msg, RunReply(ok=False, agent=self._agent, reason=str(exc)))
            return
        reason = await self.fence.refusal(request.term)
        if reason:
            log.warning("refused run %s from %s: %s", request.run_id, request.master or "?", reason)
            await self._refuse(msg, request, reason)
            return
        try:
            # The master checked this too; the agent is the last line before a root process.
            request.spec.trigger.check(request.spec.key, request.trigger, request.args, request.env)
        except TriggerRefusedError as exc:
            log.warning("refused run %s: %s", request.run_id, exc)
            await self._refuse(msg, request, str(exc))
            return
        known = self._recent.get(request.run_id)
        if known is not None:
            log.info("run %s was already taken here; answering again, not running it twice", request.run_id)
            await self._reply(msg, known)
            return
        refusal = self._refusal(request, pool)
        if refusal:
            await self._refuse(msg, request, refusal)
            return
        self._starting += 1  # counts against max_concurrency while its claim is out
        try:
            reply = await self._claim_and_launch(request, pool)
        finally:
            self._starting -= 1
        if reply is not None:
            await self._reply(msg, reply)

    async def _claim_and_launch(self, request: RunRequest, pool: str | None) -> RunReply | None:
        """The reply to a request that passed the checks; None: say nothing."""
        if not await self._gate.ready():
            # Woken after another agent took our name: the request is that agent's (it got it
            # too), or the master's to give up on. Silent, so that no refusal of ours wins.
            log.warning("run %s ignored: this agent's name was taken over meanwhile", request.run_id)
            return None
        detail = {
            **request.detail,
            **({"correlation_id": request.correlation_id} if request.correlation_id else {}),
        }
        preparing = asyncio.create_task(self._prepare_meanwhile(request, detail), name="run-prepare")
        try:
            lost = await self._claim(request, pool)
            ready = await preparing if lost is None else None  # ready by now, almost always
        finally:
            preparing.cancel()  # a claim lost (or this request cancelled): what was prepared goes
        if lost is not None:
            return lost
        reply = await self._launch(request, detail, ready)
        self._recent[request.run_id] = reply
        if len(self._recent) > RECENT_RUNS:
            self._recent.popitem(last=False)
        return reply

    async def _prepare_meanwhile(self, request: RunRequest, detail: dict[str, str]) -> Prepared | None:
        """Prepare the run's process while its claim is out (None: prepared again at its start).

        Nothing here has an effect outside this agent's memory (secrets are only read), so a
        claim lost meanwhile undoes nothing: the run is simply not started.
        """
        # Started just before the claim is sent, this first yields one turn of the loop: in
        # that turn nats-py's flusher writes the claim's request, and the CPU work below then
        # fills the claim's round trip instead of delaying its send or following its answer.
        await asyncio.sleep(0)
        draft = first_event(
            self._agent,
            request.spec,
            trigger=request.trigger,
            scheduled_at=request.scheduled_at,
            detail=detail,
            run_id=request.run_id,
            attempt=request.attempt,
        )
        try:
            return await self._executor.prepare(request.spec, draft, request.args, request.env)
        except Exception:  # noqa: BLE001 - prepared again once claimed, failing there as it always did
            log.debug("run %s: preparing ahead failed", request.run_id, exc_info=True)
            return None

    async def _launch(self, request: RunRequest, detail: dict[str, str], ready: Prepared | None) -> RunReply:
        try:
            event = await self._executor.launch(
                request.spec,
                trigger=request.trigger,
                scheduled_at=request.scheduled_at,
                run_id=request.run_id,
                attempt=request.attempt,
                args=request.args,
                env=request.env,
                detail=detail,
                ready=ready,
            )
        except Exception as exc:  # a launch bug must not leave the master waiting for nothing
            log.exception("run request %s failed", request.run_id)
            return RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=f"agent error: {exc}")
        return RunReply(
            ok=event.state in (RunState.STARTED, RunState.QUEUED),
            agent=self._agent,
            run_id=event.run_id,
            pid=event.pid,
            state=event.state.value,
            reason=event.reason,
        )

    async def _on_sync(self, msg: Msg) -> None:
        """``natsched sync-report``: what this agent's cache took in, when (JSON)."""
        if dropped_for_its_reply(msg, reply_required=True):
            return
        try:
            body = codec.from_json(msg.data, "sync request", strict=True) if msg.data.strip() else {}
            unknown = sorted(set(body) - {"sync", "full", "timeout"})
            if unknown:
                raise CodecError(f"unknown field(s) {', '.join(unknown)}; allowed: full, sync, timeout")
            timeout = body.get("timeout", RESYNC_TIMEOUT)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 300:
                raise CodecError("'timeout' must be a number of seconds, at most 300")
        except CodecError as exc:
            await self._nc.publish(
                msg.reply, codec.to_json({"ok": False, "agent": self._agent, "error": str(exc)})
            )
            return
        if body.get("sync") is True and self.resync is not None:
            # In a task of its own: a resync may take seconds, other requests go on meanwhile.
            task = asyncio.create_task(
                self._answer_resync(msg.reply, body.get("full") is True, float(timeout))
            )
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)
            return
        report = self.sync_report()
        if self.local_report is not None:
            report["local"] = await self.local_report()
        await self._nc.publish(msg.reply, codec.to_json(report))

    async def _answer_resync(self, reply: str, full: bool, timeout: float) -> None:
        assert self.resync is not None
        try:
            result = {"ok": True, **await self.resync(full, timeout)}
        except Exception as exc:  # noqa: BLE001 - not caught up in time, NATS trouble: say so
            result = {"ok": False, "error": str(exc) or type(exc).__name__}
        try:
            await self._nc.publish(reply, codec.to_json({"agent": self._agent, **result}))
        except Exception:  # noqa: BLE001 - the asker is gone or NATS is: nothing more to do
            log.debug("resync answer not sent", exc_info=True)

    async def _on_cancel(self, msg: Msg) -> None:
        if dropped_for_its_reply(msg, reply_required=True):
            return
        try:
            body = codec.unpack(msg.data, "cancel request")
            run_id = str(body["run_id"])
        except (CodecError, KeyError) as exc:
            if msg.reply:
                await self._nc.publish(
                    msg.reply, codec.pack({"ok": False, "reason": f"bad cancel request: {exc}"})
                )
            return
        found = await self._executor.cancel(run_id)
        if msg.reply:
            await self._nc.publish(
                msg.reply,
                codec.pack(
                    {
                        "ok": found,
                        "agent": self._agent,
                        "reason": "" if found else f"{run_id} is not running here",
                    }
                ),
            )
