"""Run events the master records itself: runs that never reached an agent (offline, refused,
no agent accepted) and runs it closes (lost, fan-in timeouts).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js import JetStreamContext

from natsched import subjects
from natsched.events import MSG_ID_HEADER, RunEvent, RunState, new_run_id
from natsched.runmessages import RunReply, RunRequest
from natsched.vocab import NO_AGENT, RunTrigger

log = logging.getLogger(__name__)
UNDECIDED_DETAIL = "undecided"  # detail key: the claim that decides whether the run went ahead
RECORD_FOR = 20.0  # seconds a master keeps trying to record an event it alone knows


async def publish_event(js: JetStreamContext, event: RunEvent) -> bool:
    """An event the master records itself (a run that never reached an agent); False if not.

    Tried again for up to ``RECORD_FOR`` seconds: nobody else records it, and a run whose
    only trace this is would vanish (the events stream had no leader for seconds while a
    cluster node restarted). The event id makes a repeat that did land count once.
    """
    deadline = time.monotonic() + RECORD_FOR
    pause = 0.25
    while True:
        try:
            await js.publish(event.subject, event.to_json(), headers={MSG_ID_HEADER: event.msg_id})
            return True
        except Exception as exc:  # noqa: BLE001 - the reply still tells the caller
            if time.monotonic() + pause > deadline:
                log.warning("could not record %s run %s: %r", event.state.value, event.run_id, exc)
                return False
            log.info("recording %s run %s failed (%r); trying again", event.state.value, event.run_id, exc)
        await asyncio.sleep(pause)
        pause = min(2.0, pause * 2)


async def record_failure(
    js: JetStreamContext, request: RunRequest | None, reply: RunReply, *, undecided: str = ""
) -> None:
    """The agent could not record it, so the master publishes the run's ``failed`` event.

    ``undecided``: the claim key of a run whose withdrawal NATS did not answer: the agent may
    still take it, so the event says which key decides (``detail.undecided``, for retries).
    """
    if request is None or not reply.run_id or reply.state:  # the agent published its own event
        return
    agent = reply.agent if subjects.is_token(reply.agent) else NO_AGENT
    event = RunEvent(
        run_id=reply.run_id,
        job=request.spec.key,
        agent=agent,
        state=RunState.FAILED,
        trigger=request.trigger,
        scheduled_at=request.scheduled_at,
        reason=reply.reason,
        attempt=request.attempt,
        detail={**request.detail, UNDECIDED_DETAIL: undecided} if undecided else dict(request.detail),
    )
    await publish_event(js, event)


async def record_unsent(
    js: JetStreamContext, *, job: str, trigger: RunTrigger, scheduled_at: float | None, error: Exception
) -> None:
    """A claimed slot whose dispatch raised: recorded ``failed`` on agent ``none``, not left
    silent (once its cursor is ours, no other master runs it and no audit looks at it)."""
    event = RunEvent(
        run_id=new_run_id(),
        job=job,
        agent=NO_AGENT,
        state=RunState.FAILED,
        trigger=trigger,
        scheduled_at=scheduled_at,
        reason=f"the master could not dispatch this run: {error!r}",
    )
    await publish_event(js, event)
