"""Every job definition, decoded once, kept current in the master by watching the jobs bucket.

It is the master's only source of ``JobSpec``s: apply planning, the jobs API, external
triggers, retries, chains, calendars in use, notifications, lost-run handling and the
scheduler all read it, so a definition is decoded once per change and an apply of one job
never reads (or decodes) the other 100,000. Listeners get the keys of each change.
``ready`` is set once the watch has delivered the bucket's initial contents, so nobody acts
on a partial picture (an event handled before that would miss its downstream jobs).

Read-your-writes: ``sync()`` waits until the index holds everything the bucket has
acknowledged, so a request served right after an apply (on this master or another one)
sees the new definition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.chaingraph import event_triggers
from natsched.errors import ApiError, CodecError, IndexNotReady, NotFoundError
from natsched.models import JobSpec
from natsched.triggers.event import EventTrigger

log = logging.getLogger(__name__)
SYNC_WAIT = 5.0  # seconds a request waits for the index to catch up with the bucket
READY_WAIT = 30.0  # seconds a request waits for the first full read (100k jobs take a few)


@dataclass(frozen=True, slots=True)
class Stored:
    """A key of the bucket as the index holds it: its revision and, if it decodes, its spec."""

    revision: int
    spec: JobSpec | None
    error: str = ""  # why it does not decode


class GroupView(Mapping[str, Stored]):
    """The index's entries in some groups, read on access (nothing copied)."""

    def __init__(self, index: JobIndex, groups: Iterable[str]) -> None:
        self._index = index
        self._groups = sorted(set(groups))

    def __getitem__(self, key: str) -> Stored:
        if key.partition(".")[0] not in self._groups:
            raise KeyError(key)
        return self._index.entries[key]

    def __iter__(self) -> Iterator[str]:
        for group in self._groups:
            yield from self._index.group_keys(group)

    def __len__(self) -> int:
        return sum(len(self._index.group_keys(group)) for group in self._groups)


class JobIndex:
    def __init__(self, jobs: KeyValue) -> None:
        self._kv = jobs
        self.jobs: dict[str, JobSpec] = {}  # every key that decodes
        self.entries: dict[str, Stored] = {}  # every key present, decodable or not
        self._groups: dict[str, set[str]] = {}
        self._names: dict[str, set[str]] = {}  # bare job name -> keys
        # upstream -> downstream key -> (downstream job, its trigger naming the upstream)
        self._downstream: dict[str, dict[str, tuple[JobSpec, EventTrigger]]] = {}
        self.ready = asyncio.Event()
        self._key_listeners: list[Callable[[list[str]], object]] = []
        self.last_revision = 0
        self._advanced = asyncio.Condition()

    def on_keys(self, listener: Callable[[list[str]], object]) -> Callable[[], None]:
        """Call ``listener`` with the keys of each change (also during the initial read);
        returns the function that stops it (a leader's scheduler stops listening when it steps down)."""
        self._key_listeners.append(listener)
        return lambda: self._key_listeners.remove(listener)

    def downstream(self, upstream: str) -> list[tuple[JobSpec, EventTrigger]]:
        """(job, trigger) pairs of enabled jobs that start after ``upstream`` completes."""
        return [(spec, t) for spec, t in self._downstream.get(upstream, {}).values() if spec.enabled]

    def dependents(self, upstream: str) -> set[str]:
        """Keys of every job (enabled or not) whose event triggers name ``upstream``."""
        return set(self._downstream.get(upstream, {}))

    def group_keys(self, group: str) -> set[str]:
        return self._groups.get(group, set())

    def in_groups(self, groups: Iterable[str]) -> GroupView:
        return GroupView(self, groups)

    def resolve(self, name: str) -> str:
        """A full key from ``<group>.<job>`` or a bare job name that is unique across groups."""
        if name in self.entries:
            return name
        matches = sorted(self._names.get(name, ())) if "." not in name else []
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ApiError(f"job name {name!r} is ambiguous: {', '.join(matches)}; give <group>.<job>")
        raise NotFoundError(f"no job {subjects.shown(name)}")

    def spec(self, key: str) -> JobSpec:
        """The decoded definition of ``key`` (a full key); errors name what is wrong."""
        stored = self.entries.get(key)
        if stored is None:
            raise NotFoundError(f"no job {subjects.shown(key)}")
        if stored.spec is None:
            raise CodecError(f"job {key} is invalid in the bucket: {stored.error}")
        return stored.spec

    async def find(self, name: str) -> JobSpec:
        """A job by key or unique bare name, from memory; on a miss the index first catches up
        with the bucket (a job created a moment ago through another master)."""
        if not subjects.is_job_ref(name):  # also keeps a 4 KB name out of any error line
            raise NotFoundError(f"no job {subjects.shown(name)}: not a job name")
        await self.wait_ready()
        try:
            return self.spec(self.resolve(name))
        except NotFoundError:
            await self.sync()
            return self.spec(self.resolve(name))

    async def wait_ready(self, timeout: float = READY_WAIT) -> None:
        if self.ready.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        except TimeoutError:
            raise IndexNotReady(f"the master's job index is still loading after {timeout:g}s") from None

    async def sync(self, timeout: float = SYNC_WAIT) -> None:
        """Wait until the index holds everything the bucket acknowledged so far (read-your-writes)."""
        await self.wait_ready()
        last_seq = (await self._kv.status()).stream_info.state.last_seq
        if not await self.caught_up(last_seq, timeout):
            raise IndexNotReady(f"the master's job index is behind the bucket (seq {last_seq})")

    async def watch(self) -> None:
        # The watcher's "initial values done" marker can come before the values: the read is
        # complete once the marker came and an entry with nothing pending did (or the bucket
        # was empty).
        empty = (await self._kv.status()).values == 0
        marker = last_delivered = False
        watcher = await self._kv.watchall()
        async for entry in watcher:
            if entry is None:
                marker = True
            else:
                self._apply(entry.key, entry.operation, entry.value, entry.revision or 0)
                last_delivered = last_delivered or entry.delta == 0
            if not self.ready.is_set() and marker and (empty or last_delivered):
                self.ready.set()
            if entry is not None:
                async with self._advanced:
                    self.last_revision = max(self.last_revision, entry.revision or 0)
                    self._advanced.notify_all()

    def _apply(self, key: str, operation: str | None, value: bytes | None, revision: int) -> None:
        if operation in ("DEL", "PURGE"):
            self._set(key, None)
        else:
            try:
                self._set(key, Stored(revision, codec.decode_job(value or b"", key)))
            except CodecError as exc:
                log.warning("job index skips %s: %s", key, exc)
                self._set(key, Stored(revision, None, str(exc)))
        for key_listener in list(self._key_listeners):
            key_listener([key])

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until the index has seen the bucket up to ``revision`` (False on timeout)."""
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.last_revision >= revision)
            return True
        except TimeoutError:
            return False

    def _set(self, key: str, stored: Stored | None) -> None:
        group, _, name = key.partition(".")
        old = self.jobs.pop(key, None)
        for trigger in event_triggers(old) if old else ():
            for upstream in trigger.after:
                self._downstream.get(upstream, {}).pop(key, None)
        if stored is None:
            self.entries.pop(key, None)
            self._groups.get(group, set()).discard(key)
            self._names.get(name, set()).discard(key)
            return
        self.entries[key] = stored
        self._groups.setdefault(group, set()).add(key)
        self._names.setdefault(name, set()).add(key)
        if stored.spec is None:
            return
        spec = self.jobs[key] = stored.spec
        for trigger in event_triggers(spec):
            for upstream in trigger.after:
                self._downstream.setdefault(upstream, {})[key] = (spec, trigger)
