"""Every job definition, kept current in the master by watching the jobs bucket.

The chain follower asks it which jobs start after a given job; the subject triggers ask
it which subjects to listen on. Listeners are called after each change. ``ready`` is set
once the watch has delivered the bucket's initial contents, so nobody acts on a partial
picture (an event handled before that would miss its downstream jobs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

from natsched import codec
from natsched.chaingraph import event_triggers
from natsched.errors import CodecError
from natsched.models import JobSpec
from natsched.triggers.event import EventTrigger

log = logging.getLogger(__name__)


class JobIndex:
    def __init__(self, jobs: KeyValue) -> None:
        self._kv = jobs
        self.jobs: dict[str, JobSpec] = {}
        # upstream -> downstream key -> (downstream job, its trigger naming the upstream)
        self._downstream: dict[str, dict[str, tuple[JobSpec, EventTrigger]]] = {}
        self.ready = asyncio.Event()
        self._listeners: list[Callable[[], object]] = []
        self._key_listeners: list[Callable[[list[str]], object]] = []
        self.last_revision = 0
        self._advanced = asyncio.Condition()

    def on_change(self, listener: Callable[[], object]) -> None:
        self._listeners.append(listener)

    def on_keys(self, listener: Callable[[list[str]], object]) -> Callable[[], None]:
        """Call ``listener`` with the keys of each change (also during the initial read);
        returns the function that stops it (a leader's scheduler stops listening when it steps down)."""
        self._key_listeners.append(listener)
        return lambda: self._key_listeners.remove(listener)

    def downstream(self, upstream: str) -> list[tuple[JobSpec, EventTrigger]]:
        """(job, trigger) pairs of enabled jobs that start after ``upstream`` completes."""
        return [(spec, t) for spec, t in self._downstream.get(upstream, {}).values() if spec.enabled]

    async def watch(self) -> None:
        watcher = await self._kv.watchall()
        async for entry in watcher:
            if entry is None:  # initial contents delivered
                self._changed()
                self.ready.set()
                continue
            spec: JobSpec | None = None
            if entry.operation not in ("DEL", "PURGE") and entry.value:
                try:
                    spec = codec.decode_job(entry.value, entry.key)
                except CodecError as exc:
                    log.warning("job index skips %s: %s", entry.key, exc)
            self._set(entry.key, spec)
            for key_listener in list(self._key_listeners):
                key_listener([entry.key])
            if self.ready.is_set():
                self._changed()
            async with self._advanced:
                self.last_revision = max(self.last_revision, entry.revision or 0)
                self._advanced.notify_all()

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until the index has seen the bucket up to ``revision`` (False on timeout)."""
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.last_revision >= revision)
            return True
        except TimeoutError:
            return False

    def _set(self, key: str, spec: JobSpec | None) -> None:
        old = self.jobs.pop(key, None)
        for trigger in event_triggers(old) if old else ():
            for upstream in trigger.after:
                self._downstream.get(upstream, {}).pop(key, None)
        if spec is None:
            return
        self.jobs[key] = spec
        for trigger in event_triggers(spec):
            for upstream in trigger.after:
                self._downstream.setdefault(upstream, {})[key] = (spec, trigger)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
