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

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.chaingraph import event_triggers
from natsched.errors import ApiError, CodecError, IndexNotReady, NotFoundError
from natsched.models import JobSpec
from natsched.service import JETSTREAM_UNANSWERED
from natsched.triggers.event import EventTrigger

log = logging.getLogger(__name__)
SYNC_WAIT = 5.0  # seconds a request waits for the index to catch up with the bucket
STATUS_RETRY = 0.25  # seconds between asking the bucket's stream how far it is
READY_WAIT = 30.0  # seconds a request waits for the first full read (100k jobs take a few)


class Stored:
    """A key of the bucket as the index holds it: its revision and raw value. The spec is
    decoded on first use and kept: a master with 100k stored jobs decoded all of them at
    start-up (~60 us each, 6 of its 14 s, and ~1 KB of memory each) although most are mirror
    jobs it only lists."""

    __slots__ = ("_error", "_spec", "key", "revision", "value")

    def __init__(self, key: str, revision: int, value: bytes) -> None:
        self.key = key
        self.revision = revision
        self.value = value
        self._spec: JobSpec | None = None
        self._error: str | None = None  # None: not decoded yet

    @property
    def spec(self) -> JobSpec | None:
        """The decoded definition, or None if it does not decode (``error`` says why)."""
        if self._error is None:
            try:
                self._spec = codec.decode_job(self.value, self.key)
                self._error = ""
            except CodecError as exc:
                log.warning("job index skips %s: %s", self.key, exc)
                self._error = str(exc)
        return self._spec

    @property
    def error(self) -> str:
        """Why the value does not decode ("" if it does)."""
        return "" if self.spec is not None else self._error or ""

    def mentions(self, markers: tuple[bytes, ...]) -> bool:
        """Does the raw value hold one of ``markers``? msgpack keeps strings as they are, so a
        value without b"after" has no event trigger: a test that needs no decoding."""
        value = self.value
        for marker in markers:  # noqa: SIM110 - no generator: this runs per stored job at start-up
            if marker in value:
                return True
        return False


class Specs(Mapping[str, JobSpec]):
    """Every key that decodes, decoded on access (iterating decodes everything)."""

    def __init__(self, entries: dict[str, Stored]) -> None:
        self._entries = entries

    def __getitem__(self, key: str) -> JobSpec:
        spec = self._entries[key].spec
        if spec is None:
            raise KeyError(key)
        return spec

    def __contains__(self, key: object) -> bool:
        stored = self._entries.get(key) if isinstance(key, str) else None
        return stored is not None and stored.spec is not None

    def __iter__(self) -> Iterator[str]:
        return (key for key, stored in list(self._entries.items()) if stored.spec is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_EVENT = (EventTrigger.key.encode(),)


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
        self.entries: dict[str, Stored] = {}  # every key present, decodable or not
        self.jobs = Specs(self.entries)  # every key that decodes
        self._groups: dict[str, set[str]] = {}
        # Bare job name -> its key, or its keys when several groups use the name: most names
        # are unique, and a set per name was half the index's memory (24 of 48 MB at 100k).
        self._names: dict[str, str | set[str]] = {}
        # upstream -> downstream key -> (downstream job, its trigger naming the upstream)
        self._downstream: dict[str, dict[str, tuple[JobSpec, EventTrigger]]] = {}
        self._upstreams: dict[str, tuple[str, ...]] = {}  # key -> the upstreams it is listed under
        self.ready = asyncio.Event()
        self._key_listeners: list[Callable[[list[str]], object]] = []
        self.last_revision = 0
        self._advanced = asyncio.Condition()
        # key -> (definition to put back, revision of the value that replaced it); see _apply
        self._to_restore: dict[str, tuple[bytes, int]] = {}
        self._restoring = asyncio.Event()

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
        keys = self._names.get(name, ()) if "." not in name else ()
        matches = [keys] if isinstance(keys, str) else sorted(keys)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ApiError(f"job name {name!r} is ambiguous: {', '.join(matches)}; give <group>.<job>")
        raise NotFoundError(f"no job {subjects.shown(name)}")

    def spec_if(self, key: str, markers: tuple[bytes, ...]) -> JobSpec | None:
        """The decoded definition of ``key`` if its raw value holds one of ``markers`` (see
        ``Stored.mentions``), else None: a reader that wants, say, only slave jobs does not
        decode the 100k mirror jobs around them."""
        stored = self.entries.get(key)
        return stored.spec if stored is not None and stored.mentions(markers) else None

    def mentioning(self, markers: tuple[bytes, ...]) -> dict[str, JobSpec]:
        """Every decodable job whose raw value holds one of ``markers``."""
        found = {}
        for key, stored in list(self.entries.items()):
            if stored.mentions(markers) and stored.spec is not None:
                found[key] = stored.spec
        return found

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
        last_seq = await self._last_seq(timeout)
        if not await self.caught_up(last_seq, timeout):
            raise IndexNotReady(f"the master's job index is behind the bucket (seq {last_seq})")

    async def _last_seq(self, timeout: float) -> int:
        """The bucket's last sequence, asked again within ``timeout`` while JetStream does not
        answer (a cluster electing a new leader for the stream after a node died)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(left, 0.1)):
                    return (await self._kv.status()).stream_info.state.last_seq
            except JETSTREAM_UNANSWERED as exc:
                if asyncio.get_running_loop().time() + STATUS_RETRY >= deadline:
                    raise IndexNotReady(
                        f"the job bucket did not say how far it is within {timeout:g}s ({exc!r})"
                    ) from None
            await asyncio.sleep(STATUS_RETRY)

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
        elif self._foreign(key, value):
            # Not a msgpack map, so no master wrote it: nats-server itself writes any subject a
            # client names as the reply of its JetStream publish (the acknowledgement), unchecked
            # against that client's permissions, so an agent could wipe any definition. The one
            # held stays (under the new revision, so an apply can still replace it) and is put back.
            held = self.entries[key]
            log.warning("job %s: a value no master wrote replaced its definition; putting it back", key)
            self._set(key, Stored(key, revision, held.value))
            self._to_restore[key] = (held.value, revision)
            self._restoring.set()
        else:
            self._set(key, Stored(key, revision, value or b""))
        for key_listener in list(self._key_listeners):
            key_listener([key])

    def _foreign(self, key: str, value: bytes | None) -> bool:
        """True if ``value`` (not a msgpack map) replaces a definition this index holds."""
        if codec.is_packed_map(value):  # every definition a master writes (codec.encode_job)
            return False
        held = self.entries.get(key)
        return held is not None and held.spec is not None

    async def restore(self) -> None:
        """Put back definitions a foreign value replaced (a duty of every master: the write is a
        compare-and-set on that value's revision, so an apply or another master's restore that
        came first wins, and a newer foreign value is met by the watch again)."""
        while True:
            await self._restoring.wait()
            self._restoring.clear()
            pending, self._to_restore = self._to_restore, {}
            for key, (value, revision) in pending.items():
                try:
                    await self._kv.update(key, value, last=revision)
                    log.info("job %s: definition put back", key)
                except KeyWrongLastSequenceError:
                    pass  # written again meanwhile: an apply, or another master's restore
                except Exception as exc:  # noqa: BLE001 - NATS trouble: the next start reads it as invalid
                    log.warning("job %s: definition not put back: %r", key, exc)

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait until the index has seen the bucket up to ``revision`` (False on timeout)."""
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.last_revision >= revision)
            return True
        except TimeoutError:
            return False

    def _add_name(self, name: str, key: str) -> None:
        keys = self._names.setdefault(name, key)
        if isinstance(keys, set):
            keys.add(key)
        elif keys != key:
            self._names[name] = {keys, key}

    def _forget_name(self, name: str, key: str) -> None:
        keys = self._names.get(name)
        if keys == key:
            del self._names[name]
        elif isinstance(keys, set):
            keys.discard(key)
            if len(keys) == 1:
                self._names[name] = keys.pop()

    def _set(self, key: str, stored: Stored | None) -> None:
        group, _, name = key.partition(".")
        for upstream in self._upstreams.pop(key, ()):
            self._downstream.get(upstream, {}).pop(key, None)
        if stored is None:
            self.entries.pop(key, None)
            self._groups.get(group, set()).discard(key)
            self._forget_name(name, key)
            return
        self.entries[key] = stored
        self._groups.setdefault(group, set()).add(key)
        self._add_name(name, key)
        spec = stored.spec if stored.mentions(_EVENT) else None  # only a chain's jobs are decoded here
        if spec is None:
            return
        upstreams = []
        for trigger in event_triggers(spec):
            for upstream in trigger.after:
                self._downstream.setdefault(upstream, {})[key] = (spec, trigger)
                upstreams.append(upstream)
        if upstreams:
            self._upstreams[key] = tuple(upstreams)
