"""Slots a previous leader claimed and never dispatched: recorded, never silent.

A leader claims a slot by advancing the job's cursor, then dispatches it. Killed between
the two (a window of milliseconds, which ``bench.chaos`` hits), the slot is claimed and
nobody runs it: the next leader goes on from the slot after. So a leader checks every claim
it finds in a cursor and did not make itself (``KvCursors.inherited``): when it first reads
the cursor, and when its own claim finds the cursor already written (a claim that landed late,
e.g. buffered in its master's client while nats-server restarted, whose master then found the
cursor moved on and gave it up). Once an in-flight dispatch had time to leave a trace
(``SETTLE``: the dispatch timeout and a margin, counted from when the claim was met), the
slot must have one, a run event for it or a run held by the job's pause. A slot without
any is recorded ``lost`` (agent ``none``), with a run id derived from job and slot so that
two leaders in a row record it once. It is not dispatched again: the previous leader may
be frozen mid-dispatch rather than dead, and a second dispatch could run the slot twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from natsched import codec, subjects
from natsched.errors import CodecError, NotConnectedError
from natsched.events import RunEvent, RunState, parse_event
from natsched.kvscan import read_stream, scan
from natsched.master.dispatch import REQUEST_TIMEOUT
from natsched.master.recording import publish_event
from natsched.master.scheduler import InheritedSlot, KvCursors
from natsched.vocab import NO_AGENT

log = logging.getLogger(__name__)
SETTLE = REQUEST_TIMEOUT + 2.0  # a dispatch in flight when the leader changed has left events by then
HORIZON = 3600.0  # older claims are not judged (their events may have aged out of the stream)
# Seconds before the previous leader's latest claim that are suspect: a claim can wait that long
# for its dispatch's outcome (the agents' answers, lost in a NATS restart, time out after
# REQUEST_TIMEOUT) while its master goes on claiming later slots, and is carried until then.
LAST_MOMENTS = SETTLE
EARLY = 30.0  # events are read from this long before the first suspect claim (clocks differ)
PASS = 1.0  # how often the claims met are looked at (each is checked once it is SETTLE old)


def audit_run_id(job: str, slot: float) -> str:
    """The same on every leader: the ms prefix of the slot, a hash of job and slot."""
    digest = hashlib.sha256(f"{job}@{slot!r}".encode()).hexdigest()[:12]
    return f"{int(slot * 1000):x}-{digest}"


class SlotAudit:
    """A leader duty: every inherited cursor's slot has a trace, or is recorded lost."""

    def __init__(
        self,
        js: JetStreamContext,
        cursors: KvCursors,
        *,
        settle: float = SETTLE,
        clock: Callable[[], float] = time.time,
        could_run: Callable[[str, str], bool] = lambda job, agent: True,
    ) -> None:
        self._js = js
        self._cursors = cursors
        # (job, agent) -> may that agent run that job? An agent publishes events of any job
        # under its own name: one of a job it does not run is no trace of its slots.
        self._could_run = could_run
        self._settle = settle
        self._clock = clock

    async def run(self) -> None:
        while True:  # claims are met later too: jobs loaded later, a claim that landed late
            await asyncio.sleep(min(PASS, self._settle))
            todo = self._cursors.to_audit(self._settle)
            if not todo:
                continue
            try:
                await self.check(todo)
            except Exception as exc:  # noqa: BLE001 - NATS trouble: checked on the next pass
                log.warning("inherited slots not checked now: %r", exc)
                continue
            self._cursors.audited(todo)

    async def check(self, inherited: list[InheritedSlot]) -> list[InheritedSlot]:
        """Record lost the slots among ``inherited`` that left no trace; those slots.

        Only a previous leader's last moments can hold a claim it did not dispatch: the claims
        made within ``LAST_MOMENTS`` of that master's latest one (not every job's last slot).
        """
        latest: dict[str, float] = {}
        for each in inherited:
            latest[each.master] = max(latest.get(each.master, each.at), each.at)
        suspects = [
            i for i in inherited if i.at >= latest[i.master] - LAST_MOMENTS and self._clock() - i.at < HORIZON
        ]
        if not suspects:
            return []
        traces = await self._events_since(min(i.at for i in suspects) - EARLY)
        untraced = []
        for each in suspects:
            trace = traces.get((each.job, each.slot))
            missing = trace.missing() if trace is not None else None
            if missing is None and await self._held(each):
                continue
            if missing != (0, 0):
                untraced.append(each)
                await self._record(each, missing)
        return untraced

    async def _record(self, inherited: InheritedSlot, missing: tuple[int, int] | None) -> None:
        what = "this slot" if missing is None else f"this slot on {missing[0]} of its {missing[1]} targets"
        reason = (
            f"no record of {what}: master {inherited.master}, which claimed it, "
            "stopped leading before it dispatched it"
        )
        log.warning("%s slot %s: %s", inherited.job, inherited.slot, reason)
        event = RunEvent(
            run_id=audit_run_id(inherited.job, inherited.slot),
            job=inherited.job,
            agent=NO_AGENT,
            state=RunState.LOST,
            trigger=inherited.trigger,
            scheduled_at=inherited.slot,
            reason=reason,
        )
        if not await publish_event(self._js, event):  # kept for the next pass, not dropped
            raise NotConnectedError(f"{inherited.job} slot {inherited.slot}: lost record not published")

    async def _events_since(self, since: float) -> dict[tuple[str, float], _Trace]:
        """The trace of each (job, slot) in the run events since ``since``."""
        seen: dict[tuple[str, float], _Trace] = {}
        async for msg in read_stream(self._js, subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS, since=since):
            try:
                event = json.loads(msg.data)
                if event.get("scheduled_at") is not None:
                    parsed = parse_event(msg.data, msg.subject)  # the body must match the subject
                    if not self._could_run(parsed.job, parsed.agent):
                        continue
                    key = (str(event["job"]), float(event["scheduled_at"]))
                    seen.setdefault(key, _Trace()).add(event)
            except (CodecError, ValueError, KeyError, TypeError, AttributeError):
                continue
        return seen

    async def _held(self, inherited: InheritedSlot) -> bool:
        """A run of the slot held by the job's pause (``--queue``) is its trace."""
        held = await scan(self._js, subjects.STATE_BUCKET, subjects.held_runs(inherited.job))
        for key, value in held.items():
            try:
                if codec.unpack(value.value or b"", key).get("scheduled_at") == inherited.slot:
                    return True
            except CodecError:
                continue
        return False


@dataclass(slots=True)
class _Trace:
    """A slot's events: a dispatch to several targets (a slave job's batch) leaves a trace only
    when each target has one (its run's events, or its failure the master recorded)."""

    whole: bool = False  # an event for the slot as a whole (one target, or agent none)
    batches: dict[str, tuple[int, set[str]]] = field(default_factory=dict)  # batch -> size, agents

    def add(self, event: dict[str, Any]) -> None:
        detail = event.get("detail") or {}
        batch, size = str(detail.get("batch", "")), int(detail.get("batch_size", "1") or 1)
        if not batch or size <= 1 or event.get("agent") == NO_AGENT:
            self.whole = True
            return
        self.batches.setdefault(batch, (size, set()))[1].add(str(event.get("agent", "")))

    def missing(self) -> tuple[int, int]:
        """(targets without a trace, targets) of the worst batch; (0, 0) when fully traced."""
        if self.whole:
            return (0, 0)
        gaps = [(size - len(agents), size) for size, agents in self.batches.values() if len(agents) < size]
        return max(gaps) if gaps else (0, 0)
