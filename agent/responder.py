"""Answering the master: run requests (slave and load-balance dispatch) and cancels.

The reply goes out as soon as the process has *started* (with its pid), not when it
ends; the end is an event like any other. An agent at its ``max_concurrency`` refuses,
so the master (or the pool's queue group) tries the next agent. Garbage gets an error
reply and is logged; it never takes the agent down. A request for a run id this agent
already took (a master repeating a dispatch after a crash) gets the first answer again
and runs nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agent.executor import JobExecutor
from natsched import codec, subjects
from natsched.dispatch import RunReply, decode_run_request
from natsched.errors import CodecError, TriggerRefusedError
from natsched.events import RunState
from natsched.models import Mode

log = logging.getLogger(__name__)
RECENT_RUNS = 10_000  # run ids remembered for answering a repeated dispatch


class Responder:
    def __init__(
        self, nc: Client, executor: JobExecutor, *, agent: str, pools: frozenset[str], max_concurrency: int
    ) -> None:
        self._nc = nc
        self._executor = executor
        self._agent = agent
        self._pools = pools
        self._max = max_concurrency
        self._subs: list[Subscription] = []
        self._recent: OrderedDict[str, RunReply] = OrderedDict()
        self.sync_report: Callable[[], dict[str, Any]] = lambda: {"agent": agent, "report": []}
        self.max_term = 0  # highest leader term seen in a dispatch: the fencing token

    async def start(self) -> None:
        self._subs.append(await self._nc.subscribe(subjects.agent_run_subject(self._agent), cb=self._on_run))
        self._subs.append(
            await self._nc.subscribe(subjects.agent_cancel_subject(self._agent), cb=self._on_cancel)
        )
        self._subs.append(
            await self._nc.subscribe(subjects.agent_sync_subject(self._agent), cb=self._on_sync)
        )
        for pool in sorted(self._pools):
            self._subs.append(
                await self._nc.subscribe(
                    subjects.pool_run_subject(pool), queue=subjects.pool_queue(pool), cb=self._on_run
                )
            )

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone
                log.debug("unsubscribe failed", exc_info=True)
        self._subs.clear()

    async def _reply(self, msg: Msg, reply: RunReply) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, reply.encode())

    async def _on_run(self, msg: Msg) -> None:
        try:
            request = decode_run_request(msg.data)
        except CodecError as exc:
            log.warning("bad run request on %s: %s", msg.subject, exc)
            await self._reply(msg, RunReply(ok=False, agent=self._agent, reason=str(exc)))
            return
        if request.term < self.max_term:
            reason = f"stale master: term {request.term} < {self.max_term} (another master leads now)"
            log.warning("refused run %s from %s: %s", request.run_id, request.master or "?", reason)
            await self._reply(
                msg, RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=reason)
            )
            return
        self.max_term = request.term
        try:
            # The master checked this too; the agent is the last line before a root process.
            request.spec.trigger.check(request.spec.key, request.trigger, request.args, request.env)
        except TriggerRefusedError as exc:
            log.warning("refused run %s: %s", request.run_id, exc)
            await self._reply(
                msg, RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=str(exc))
            )
            return
        known = self._recent.get(request.run_id)
        if known is not None:
            log.info("run %s was already taken here; answering again, not running it twice", request.run_id)
            await self._reply(msg, known)
            return
        if request.spec.mode is Mode.LOAD_BALANCE:
            # Refused, not held (manual runs too): another agent of the pool takes it.
            paused = self._executor.holds().agent_hold(self._agent)[1]
            if paused:
                await self._reply(
                    msg, RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=paused)
                )
                return
        if self._executor.running >= self._max:
            await self._reply(
                msg,
                RunReply(
                    ok=False,
                    agent=self._agent,
                    run_id=request.run_id,
                    reason=f"busy: {self._executor.running}/{self._max} runs",
                ),
            )
            return
        try:
            event = await self._executor.launch(
                request.spec,
                trigger=request.trigger,
                scheduled_at=request.scheduled_at,
                run_id=request.run_id,
                attempt=request.attempt,
                args=request.args,
                env=request.env,
                detail={
                    **request.detail,
                    **({"correlation_id": request.correlation_id} if request.correlation_id else {}),
                },
            )
        except Exception as exc:  # a launch bug must not leave the master waiting for nothing
            log.exception("run request %s failed", request.run_id)
            await self._reply(
                msg,
                RunReply(ok=False, agent=self._agent, run_id=request.run_id, reason=f"agent error: {exc}"),
            )
            return
        reply = RunReply(
            ok=event.state in (RunState.STARTED, RunState.QUEUED),
            agent=self._agent,
            run_id=event.run_id,
            pid=event.pid,
            state=event.state.value,
            reason=event.reason,
        )
        self._recent[request.run_id] = reply
        if len(self._recent) > RECENT_RUNS:
            self._recent.popitem(last=False)
        await self._reply(msg, reply)

    async def _on_sync(self, msg: Msg) -> None:
        """``natsched sync-report``: what this agent's cache took in, when (JSON)."""
        if msg.reply:
            await self._nc.publish(msg.reply, codec.to_json(self.sync_report()))

    async def _on_cancel(self, msg: Msg) -> None:
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
