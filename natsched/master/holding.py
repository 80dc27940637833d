"""The master's side of calendars and job pauses (see ``natsched/calendars.py``).

Every run the master decides on its own (a schedule slot, a chain step, a subject
message) asks ``admit`` first. A held-back run is either recorded ``skipped`` with the
reason (agent ``none``: it never reached one) or, for a job paused with ``mode = "queue"``,
kept and started when the pause is lifted. Queued runs live in this master's memory (at
most ``MAX_QUEUED`` per job); a master that stops while holding them logs how many it drops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from natsched import codec
from natsched.calendars import PAUSE_JOB_PREFIX, Holds
from natsched.errors import CodecError, SpecError
from natsched.events import RunEvent, RunState, new_run_id
from natsched.master.dispatch import publish_event
from natsched.models import JobSpec
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)
MAX_QUEUED = 100

Start = Callable[[], Coroutine[Any, Any, Any]]


class Holding:
    def __init__(
        self, settings: KeyValue, js: JetStreamContext, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._kv = settings
        self._js = js
        self._clock = clock
        self.holds = Holds()
        self._queued: dict[str, list[Start]] = {}
        self._spawn: Callable[[Coroutine[Any, Any, Any], str], object] = lambda coro, name: None

    def on_release(self, spawn: Callable[[Coroutine[Any, Any, Any], str], object]) -> None:
        """How to start queued runs when their pause is lifted (a task the service owns)."""
        self._spawn = spawn

    async def watch(self) -> None:
        watcher = await self._kv.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            try:
                value = None if deleted else codec.unpack(entry.value or b"", entry.key)
                self.holds.apply(entry.key, value)
            except (CodecError, SpecError, TypeError, ValueError) as exc:
                log.warning("ignoring setting %s: %s", entry.key, exc)
                continue
            if entry.key.startswith(PAUSE_JOB_PREFIX) and deleted:
                self._release(entry.key[len(PAUSE_JOB_PREFIX) :])

    def _release(self, job: str) -> None:
        starts = self._queued.pop(job, [])
        if starts:
            log.info("%s resumed: starting %d queued run(s)", job, len(starts))
        for start in starts:
            self._spawn(start(), f"resumed-{job}")

    async def admit(
        self, spec: JobSpec, trigger: RunTrigger, start: Start, *, at: float | None = None
    ) -> bool:
        """True: go ahead now. False: held back (recorded skipped, or queued to run on resume)."""
        action, reason = self.holds.job_hold(
            spec.calendar, spec.key, trigger, self._clock() if at is None else at
        )
        if not action:
            return True
        if action == "queue":
            queue = self._queued.setdefault(spec.key, [])
            if len(queue) < MAX_QUEUED:
                queue.append(start)
                log.info("%s %s run queued: %s", spec.key, trigger, reason)
                return False
            reason = f"{reason}; {MAX_QUEUED} runs already queued"
        event = RunEvent(
            run_id=new_run_id(),
            job=spec.key,
            agent="none",
            state=RunState.SKIPPED,
            trigger=trigger,
            scheduled_at=at,
            reason=reason,
        )
        log.info("%s %s run skipped: %s", spec.key, trigger, reason)
        await publish_event(self._js, event)
        return False

    def dropped(self) -> int:
        return sum(len(q) for q in self._queued.values())
