"""Runs that agents accepted, as the master heard it in their replies.

An agent's own ``started`` (or ``queued``) event reaches the events stream a moment after its
reply; an agent that dies in between (or whose event waited in memory) leaves a run that
no event and no heartbeat knows. The leader remembers the accepted runs of each agent (the
latest ``PER_AGENT``), and closes those with no event on record when the agent is lost.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from natsched import subjects
from natsched.events import RunEvent, RunState
from natsched.runmessages import RunReply, RunRequest

PER_AGENT = 1000


Accepted = tuple[RunRequest, RunReply, float]  # and when the reply came
_STARTS = frozenset({RunState.STARTED.value, RunState.QUEUED.value})


class AcceptedRuns:
    def __init__(self, per_agent: int = PER_AGENT) -> None:
        self._per_agent = per_agent
        # Kept as they came; the events are built only for an agent that is lost (building one
        # per dispatch was ~5% of the master's work per run).
        self._runs: dict[str, OrderedDict[str, Accepted]] = {}

    def note(self, request: RunRequest, reply: RunReply) -> None:
        # Only a start by this dispatch (its reply names the state the run started in). "Taken
        # by b1" answers a repeat (a lost run sent again, a master's repeat after a crash) of a
        # run b1 took maybe a life ago: noted as just accepted, it was a run of b1's current
        # life with no event on record, lost and started once more when b1 was. A late answer
        # is no loss: the agent's claim of it is read.
        if not reply.ok or reply.state not in _STARTS or not subjects.is_token(reply.agent):
            return
        runs = self._runs.setdefault(reply.agent, OrderedDict())
        runs[reply.run_id or request.run_id] = (request, reply, time.time())
        if len(runs) > self._per_agent:
            runs.popitem(last=False)

    def of(self, agent: str) -> dict[str, RunEvent]:
        """The runs ``agent`` accepted lately (run id -> what the master knows of it)."""
        return {run_id: _event(run_id, *accepted) for run_id, accepted in self._runs.get(agent, {}).items()}


def _event(run_id: str, request: RunRequest, reply: RunReply, at: float) -> RunEvent:
    return RunEvent(
        run_id=run_id,
        job=request.spec.key,
        agent=reply.agent,
        state=RunState.QUEUED if reply.state == RunState.QUEUED.value else RunState.STARTED,
        trigger=request.trigger,
        scheduled_at=request.scheduled_at,
        attempt=request.attempt,
        detail=dict(request.detail),
        pid=reply.pid,
        reason="accepted by the agent; no event of its own on record",
        at=at,
    )
