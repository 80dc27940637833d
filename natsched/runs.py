"""Reading runs back from the event and log streams (for ``natsched runs`` and ``logs``).

Run ids start with their start time in hex milliseconds, so finding one run means
reading the events stream from that moment on, not from its beginning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from nats.js import JetStreamContext

from natsched import subjects
from natsched.errors import CodecError, NotFoundError
from natsched.events import RunEvent, parse_event
from natsched.kvscan import read_stream

log = logging.getLogger(__name__)

READ_TIMEOUT = 30.0


@dataclass(kw_only=True, slots=True)
class RunSummary:
    """A run as its latest event describes it, with every state it went through."""

    latest: RunEvent
    states: list[str] = field(default_factory=list)
    detail: dict[str, str] = field(default_factory=dict)  # every event's trigger detail, merged

    def add(self, event: RunEvent) -> None:
        self.states.append(event.state.value)
        self.detail.update(event.detail)
        if event.state.final or not self.latest.state.final:
            keep_start = self.latest.started_at
            self.latest = event
            if event.started_at is None and keep_start is not None:
                self.latest = replace(event, started_at=keep_start)


def run_started_at(run_id: str) -> float:
    """The start time encoded in a run id; NotFoundError for a malformed id."""
    try:
        started = int(run_id.split("-", 1)[0], 16) / 1000
    except ValueError:
        started = -1.0
    if not 0 <= started < 1e11:  # also keeps a forged 64-digit id away from datetime's range
        raise NotFoundError(f"{run_id[:80]!r} is not a natsched run id")
    return started


def event_filter(job: str | None = None, agent: str | None = None, state: str | None = None) -> str:
    if job is not None and "." not in job:
        raise NotFoundError(f"give the job as <group>.<job>, not {job!r}")
    return subjects.events_matching(job, agent, state)


TAIL_WINDOW = 2000  # events read first from the end of the stream; grows 8x while too few runs


async def tail_runs(
    js: JetStreamContext, subject: str, *, want: int, state: str | None = None
) -> tuple[list[RunSummary], int]:
    """The newest runs from the end of the stream: read a window of the last events, and a
    larger one only while it holds fewer than ``want`` runs; (runs, events read).

    ``natsched runs`` thus costs about the same with a thousand or a million events stored.
    A run whose first events lie before the window shows only the states inside it.
    """
    info = await js.stream_info(subjects.EVENTS_STREAM)
    first, last = int(info.state.first_seq or 1), int(info.state.last_seq or 0)
    window, read = TAIL_WINDOW, 0
    while True:
        start = max(first, last - window + 1)
        runs: dict[str, RunSummary] = {}
        if last >= first:
            async for msg in read_stream(js, subjects.EVENTS_STREAM, subject, from_seq=start):
                read += 1
                _add(runs, msg.data, msg.subject)
        found = [r for r in runs.values() if state is None or r.latest.state.value == state]
        if len(found) >= want or start <= first:
            found.sort(key=lambda r: r.latest.run_id, reverse=True)
            return found[:want], read
        window *= 8


def _add(runs: dict[str, RunSummary], data: bytes, subject: str) -> None:
    try:
        event = parse_event(data, subject)
    except CodecError:
        return  # garbage in the stream is not a run
    add_event(runs, event)


def add_event(runs: dict[str, RunSummary], event: RunEvent) -> None:
    """Fold one event into the run summaries by run id."""
    summary = runs.get(event.run_id)
    if summary is None:
        runs[event.run_id] = RunSummary(latest=event, states=[event.state.value], detail=dict(event.detail))
    elif event.agent == summary.latest.agent:
        summary.add(event)
    else:
        # A run belongs to the agent of its first event: another agent cannot speak for it.
        log.warning(
            "ignoring %s event of run %s from %s: it runs on %s",
            event.state.value,
            event.run_id,
            event.agent,
            summary.latest.agent,
        )


async def list_runs(
    js: JetStreamContext,
    *,
    job: str | None = None,
    agent: str | None = None,
    state: str | None = None,
    since: float | None = None,
    limit: int = 50,
) -> list[RunSummary]:
    """Runs newest first; ``state`` filters on the run's latest state.

    Without ``since`` only the end of the stream is read (see ``tail_runs``).
    """
    if since is None:
        return (await tail_runs(js, event_filter(job, agent), want=limit, state=state))[0]
    runs: dict[str, RunSummary] = {}
    async for msg in read_stream(js, subjects.EVENTS_STREAM, event_filter(job, agent), since=since):
        _add(runs, msg.data, msg.subject)
    result = [r for r in runs.values() if state is None or r.latest.state.value == state]
    result.sort(key=lambda r: r.latest.run_id, reverse=True)
    return result[:limit]


async def get_run(js: JetStreamContext, run_id: str) -> RunSummary:
    since = run_started_at(run_id) - 2.0
    runs: dict[str, RunSummary] = {}
    async for msg in read_stream(js, subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS, since=since):
        try:
            event = parse_event(msg.data, msg.subject)
        except CodecError:
            continue
        if event.run_id == run_id:
            add_event(runs, event)
    if run_id not in runs:
        raise NotFoundError(f"no run {run_id} in {subjects.EVENTS_STREAM}")
    return runs[run_id]
