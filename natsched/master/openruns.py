"""The runs an agent left open when it died or restarted, from every record of them.

Its events since its life started (each run's latest state), the run ids its last heartbeat
listed, the runs it accepted in its replies to this master, and the runs it claimed
(``natsched/claims.py``): an agent killed a few milliseconds after a start leaves no event and
no heartbeat naming the run, and the master it answered may be dead too; its claim is in
JetStream before anything starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from natsched import subjects
from natsched.claims import decode_claim
from natsched.errors import CodecError
from natsched.events import RunEvent, RunState, parse_event
from natsched.kvscan import read_stream
from natsched.master.accepted import AcceptedRuns
from natsched.models import Heartbeat
from natsched.vocab import RunTrigger, run_trigger

LOOKBACK = 86400.0  # at most this far back for the runs of a lost agent
SLACK = 5.0  # seconds before a life's start that its runs are looked for (clocks differ)


@dataclass(slots=True)
class RunHistory:
    latest: dict[str, RunEvent] = field(default_factory=dict)  # its first final event, once it has one
    first: dict[str, float] = field(default_factory=dict)  # when its first event was (agent clock)


class AgentRuns:
    def __init__(
        self, js: JetStreamContext, accepted: AcceptedRuns, life_starts: Mapping[tuple[str, float], float]
    ) -> None:
        self._js = js
        self._accepted = accepted
        self._life_starts = life_starts  # (agent, started_at) -> its start on the server's clock

    async def history(self, heartbeat: Heartbeat) -> RunHistory:
        """The runs of the agent's events since ``heartbeat``'s life started."""
        history = RunHistory()
        latest, first = history.latest, history.first
        async for msg in read_stream(
            self._js,
            subjects.EVENTS_STREAM,
            subjects.agent_events(heartbeat.agent),
            since=since(heartbeat, self._life_starts),
        ):
            try:
                event = parse_event(msg.data, msg.subject)
            except CodecError:
                continue
            if event.run_id not in latest or not latest[event.run_id].state.final:
                latest[event.run_id] = event
            first[event.run_id] = min(first.get(event.run_id, event.at), event.at)
        return history

    async def still_open(
        self, heartbeat: Heartbeat, history: RunHistory, *, before: float | None = None
    ) -> dict[str, RunEvent]:
        """Runs of the agent queued or started and with no final event (events since it started);
        with ``before`` (the agent's clock), only those whose last event came before it."""
        agent, start, latest = heartbeat.agent, since(heartbeat, self._life_starts), history.latest
        open_runs = {
            run_id: e for run_id, e in latest.items() if e.state.open and (before is None or e.at < before)
        }
        for run_id, job in heartbeat.runs.items():  # started too recently for the stream read? no: listed
            if run_id not in latest:
                open_runs[run_id] = RunEvent(
                    run_id=run_id, job=job, agent=agent, state=RunState.STARTED, trigger=RunTrigger.UNKNOWN
                )
        accepted = self._accepted.of(agent)  # before the claims are read: theirs are in the read
        claimed, later = await self._claimed(heartbeat, start, before)
        for run_id, event in accepted.items():
            # Accepted in its reply, but its own event never reached the stream (it died first).
            # Not one its next life claimed: its event may be a few ms away, the run going on.
            if run_id not in latest and run_id not in open_runs and run_id not in later and event.at >= start:
                open_runs[run_id] = event
        for run_id, event in claimed.items():
            # Claimed, and no event out: the master whose reply said so may have died too.
            if run_id not in latest and run_id not in open_runs:
                open_runs[run_id] = event
        return open_runs

    async def _claimed(
        self, heartbeat: Heartbeat, start: float, before: float | None
    ) -> tuple[dict[str, RunEvent], set[str]]:
        """The runs the agent claimed since ``start`` (before ``before``, its clock): its own
        claim keys and its pools', holding its name; and the run ids it claimed from ``before``
        on (its next life's)."""
        agent, claimed, later = heartbeat.agent, {}, set()
        prefix = subjects.kv_subject_prefix(subjects.CLAIMS_BUCKET)
        for key_filter in subjects.claims_of(agent, heartbeat.pools):
            async for msg in read_stream(
                self._js, subjects.kv_stream(subjects.CLAIMS_BUCKET), prefix + key_filter, since=start
            ):
                key = msg.subject[len(prefix) :]
                try:
                    holder = decode_claim(msg.data, key)
                except CodecError:
                    continue  # a delete marker, or garbage: no run of this agent
                run, run_id = holder.run, subjects.claim_run_id(key)
                if holder.agent != agent or run is None:
                    continue
                if before is not None and run.at >= before:
                    later.add(run_id)
                    continue
                claimed[run_id] = RunEvent(
                    run_id=run_id, job=run.job, agent=agent, state=RunState.STARTED,
                    trigger=run_trigger(run.trigger), scheduled_at=run.scheduled_at, attempt=run.attempt,
                    detail=dict(run.detail), reason="claimed by the agent; no event of its own on record",
                    at=run.at,
                )  # fmt: skip
        return claimed, later


def since(heartbeat: Heartbeat, life_starts: Mapping[tuple[str, float], float]) -> float:
    """Where the runs of ``heartbeat``'s life start in the streams, with slack: its own start
    time, or the one its heartbeats' arrival on the server's clock gives if earlier (an agent
    whose clock ran 30 s ahead, lost in its first 25 s, had every record of its runs before its
    own start time: none was closed, none re-dispatched)."""
    start = min(heartbeat.started_at, life_starts.get((heartbeat.agent, heartbeat.started_at), math.inf))
    return max(start, time.time() - LOOKBACK) - SLACK
