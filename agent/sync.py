"""Keeping the agent's cache equal to the jobs bucket (for the jobs that target it).

We read the bucket's stream ourselves instead of ``kv.watch()``: an ordered consumer
resumes at ``last_seq + 1`` after a restart (no full re-read), and a full resync uses
``LAST_PER_SUBJECT``. A *gap* means the cache's position no longer fits the stream:
the stream was recreated (other created time), purged (last_seq went backwards), or
compacted past us (first_seq beyond our position); then we resync fully and delete
what is gone. A periodic cheap check (stream info) catches what a live watcher does
not notice, such as a bucket deleted and recreated under it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from agent.cache import CachedJob, JobCache, SyncPosition
from agent.fullread import Delivery, delivery, read_last_per_subject
from natsched import codec, subjects
from natsched.buckets import is_delete
from natsched.errors import CodecError, SpecError
from natsched.models import AgentIdentity, Targets

log = logging.getLogger(__name__)
REPORT_ENTRIES = 200  # sync report entries kept in memory
REPORT_KEYS = 20  # job keys listed per entry

CHECK_INTERVAL = 5.0
RETRY_DELAY = 1.0
_STREAM = subjects.kv_stream(subjects.JOBS_BUCKET)
_PREFIX = subjects.kv_subject_prefix(subjects.JOBS_BUCKET)
_MALFORMED = object()


class _Inbox:
    """Changes classified in the subscription callback, taken in batches by one consumer."""

    def __init__(self) -> None:
        self._changes: list[_Change] = []
        self._arrived = asyncio.Event()

    def add(self, change: _Change) -> None:
        self._changes.append(change)
        self._arrived.set()

    async def take(self) -> list[_Change]:
        """Everything that arrived since the last call (waits for at least one change)."""
        await self._arrived.wait()
        self._arrived.clear()
        batch, self._changes = self._changes, []
        return batch


class _Restart(Exception):
    """The current sync session no longer fits the stream; start a new one."""


@lru_cache(maxsize=4096)
def _targets(agents: tuple[str, ...], tags: tuple[str, ...], pools: tuple[str, ...]) -> Targets:
    # Most jobs share a handful of target sets: validate each set once.
    return Targets(agents=agents, tags=tags, pools=pools)


def wanted(key: str, value: dict[str, Any], identity: AgentIdentity) -> bool:
    """Does the job stored under ``key`` target this agent? Raises SpecError on bad targets."""
    raw = value.get("targets")
    if not isinstance(raw, dict):
        raise SpecError("targets missing or not a map", field="targets")
    targets = _targets(tuple(raw.get("agents", ())), tuple(raw.get("tags", ())), tuple(raw.get("pools", ())))
    return identity.takes(key.partition(".")[0], targets)


def _ack_fields(msg: Msg) -> tuple[int, int, float]:
    """(stream sequence, messages pending, stored at) from the reply subject of a JetStream
    message: nats-py's ``msg.metadata`` builds objects and a datetime for them, ~6 us a
    message; this is ~1 us."""
    where = delivery(msg.reply)
    if where is not None:
        return where.stream_seq, where.pending, where.stored_ns / 1e9
    meta = msg.metadata  # anything else: let nats-py parse it (or say it is no JetStream message)
    stored = meta.timestamp.timestamp() if meta.timestamp else 0.0
    return meta.sequence.stream, meta.num_pending, stored


def _describe(exc: BaseException) -> str:
    """The error itself, not the task group around it (the session runs a TaskGroup)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


class _Change(NamedTuple):
    """One message of the bucket's stream, classified for this agent."""

    key: str
    seq: int
    pending: int
    job: CachedJob | None | object  # a job to keep, None to drop, _MALFORMED to leave as it is
    untargeted: bool = False  # dropped because it no longer targets this agent (not deleted)


class JobSync:
    """Runs while connected; ``synced`` is set once the cache has caught up with the bucket."""

    def __init__(
        self,
        nc: Client,
        cache: JobCache,
        identity: AgentIdentity,
        *,
        check_interval: float = CHECK_INTERVAL,
        on_report: Callable[[dict[str, Any]], None] = lambda entry: None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        # True once the agent stops: then a failure ends ``run`` instead of a retry. Python
        # 3.11's TaskGroup turns a cancellation that meets a child's error (a NATS call failing
        # as the connection closes) into an ExceptionGroup of those errors, and does not raise
        # the cancellation again: the retry loop below took it for NATS trouble and went on
        # (every agent stop waited out 20 cancellations, 5 s, and logged an error). The task's
        # own cancel count cannot tell: 3.11's TaskGroup leaves one there after a child fails.
        self.stopping: Callable[[], bool] = lambda: False
        # Told each full resync's report entry and the first failure after being in sync
        # (agent/syncnotify.py pushes them to the configured targets).
        self._on_report = on_report
        self._failing = False
        self._check_interval = check_interval
        self._cache = cache
        self._identity = identity
        self.synced = asyncio.Event()
        self.position: SyncPosition | None = None
        self.listeners: list[Callable[[set[str]], None]] = []
        self.full_resyncs = 0
        # What changed in the cache, when (newest last): `natsched sync-report <agent>` shows it.
        self.report: collections.deque[dict[str, Any]] = collections.deque(maxlen=REPORT_ENTRIES)
        self._force_full = False
        self.last_sync_seconds = 0.0
        self.entries = 0  # report entries ever recorded (the deque keeps the last REPORT_ENTRIES)
        self._kick = asyncio.Event()  # `natsched sync`: start a new session now
        self._waiting: list[tuple[int, asyncio.Event]] = []  # (after session n, set once caught up)
        self._sessions = 0

    async def resync(self, *, full: bool, timeout: float) -> dict[str, Any]:
        """Re-read the bucket now (from the cache's position, or everything with ``full``) and
        return what changed and the revision reached (``natsched sync``)."""
        first_entry = self.entries
        caught_up = asyncio.Event()
        waiter = (self._sessions, caught_up)  # only a session that starts after this call counts
        self._waiting.append(waiter)
        self._force_full = self._force_full or full
        self._kick.set()
        try:
            async with asyncio.timeout(timeout):
                await caught_up.wait()
        except TimeoutError:
            raise TimeoutError(f"not caught up with {subjects.JOBS_BUCKET} within {timeout:g}s") from None
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
        new = min(self.entries - first_entry, len(self.report))
        return {
            "full": full,
            "revision": self.position.last_seq if self.position else 0,
            "changes": list(self.report)[len(self.report) - new :],
        }

    async def _wait_kick(self) -> None:
        await self._kick.wait()
        raise _Restart("a resync was asked for (natsched sync)")

    def _caught_up(self, session: int) -> None:
        self._failing = False
        for after, event in self._waiting:
            if session > after:
                event.set()
        self._waiting = [(after, event) for after, event in self._waiting if not event.is_set()]

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except _Restart as why:
                log.info("job sync restarts: %s", why)
            except (TimeoutError, OSError) as exc:
                if self.stopping():
                    raise asyncio.CancelledError from exc
                log.warning("job sync interrupted (%s); retrying", exc or type(exc).__name__)
                self._failed(_describe(exc))
                await asyncio.sleep(RETRY_DELAY)
            except Exception as exc:  # noqa: BLE001 - nats-py raises many kinds while reconnecting
                if self.stopping():
                    raise asyncio.CancelledError from exc
                log.warning("job sync failed (%r); retrying", exc)
                self._failed(_describe(exc))
                await asyncio.sleep(RETRY_DELAY)

    def _failed(self, error: str) -> None:
        """Report a failure once per outage: again only after the sync was back in sync."""
        if self._failing:
            return
        self._failing = True
        revision = self.position.last_seq if self.position else 0
        self._tell({"at": time.time(), "kind": "failure", "error": error[:500], "revision": revision})

    def _tell(self, entry: dict[str, Any]) -> None:
        try:
            self._on_report(entry)
        except Exception:  # noqa: BLE001 - a reporting bug must not stop syncing
            log.exception("sync report listener failed")

    def _classify(self, msg: Msg, seq: int, pending: int, stored: float) -> _Change:
        key = msg.subject[len(_PREFIX) :]
        if is_delete(msg.headers):
            return _Change(key, seq, pending, None)
        try:
            value = codec.unpack(msg.data, f"job {key}")
            if not wanted(key, value, self._identity):
                return _Change(key, seq, pending, None, untargeted=True)
            # When the master wrote it: in easy replication, a newer local job wins over it.
            modified = stored
            job = CachedJob(key, seq, str(value.get("mode", "mirror")), msg.data, modified)
            return _Change(key, seq, pending, job)
        except (CodecError, SpecError, TypeError) as exc:
            log.warning("skipping malformed job definition %s (revision %d): %s", key, seq, exc)
            return _Change(key, seq, pending, _MALFORMED)

    async def _stream_info(self) -> api.StreamInfo:
        try:
            return await self._js.stream_info(_STREAM)
        except NotFoundError:
            log.info("bucket %s does not exist yet; waiting for a master to create it", subjects.JOBS_BUCKET)
            await asyncio.sleep(RETRY_DELAY)
            raise _Restart("bucket missing") from None

    async def _session(self) -> None:
        info = await self._stream_info()
        created = info.created.isoformat() if info.created else ""
        state = info.state
        position = self.position = await self._cache.position()
        # A compacted first_seq is no gap: with history 1, every key changed after our
        # position still has its newest message in the stream. Lost deletes are caught
        # by the key-count check in _check_stream.
        full = (
            self._force_full
            or position is None
            or position.stream_created != created
            or position.last_seq > state.last_seq
        )
        self._force_full = False
        self._kick.clear()  # this session is the one asked for
        self._sessions += 1
        session = self._sessions
        start = time.perf_counter()
        inbox = _Inbox()

        target = state.last_seq if state.messages else 0
        if full:
            log.info("job sync: full resync from %s (%d messages)", subjects.JOBS_BUCKET, state.messages)
            await self._full_resync(created, target)
            self.full_resyncs += 1
        assert self.position is not None
        # What changed since (after a full resync: while it was being applied) comes from here.
        sub = await self._read_from(inbox, self.position.last_seq + 1)
        try:
            if self.position.last_seq < target:
                await self._apply_batches(inbox, created, until=target)
            self.last_sync_seconds = time.perf_counter() - start
            if not self.synced.is_set():
                log.info(
                    "job sync: %d jobs cached, in sync at revision %d (%.3f s)",
                    await self._cache.count(),
                    self.position.last_seq if self.position else 0,
                    self.last_sync_seconds,
                )
            self.synced.set()
            self._caught_up(session)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._apply_batches(inbox, created, until=None))
                tg.create_task(self._check_stream(created))
                tg.create_task(self._wait_kick())
        except* _Restart as group:
            raise group.exceptions[0] from None
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                log.debug("unsubscribe failed", exc_info=True)

    async def _read_from(self, inbox: _Inbox, start_seq: int) -> JetStreamContext.PushSubscription:
        """An ordered consumer on the bucket's stream into ``inbox``, from ``start_seq`` on."""

        async def enqueue(msg: Msg) -> None:
            inbox.add(self._classify(msg, *_ack_fields(msg)))

        by_sequence = api.DeliverPolicy.BY_START_SEQUENCE
        config = api.ConsumerConfig(deliver_policy=by_sequence, opt_start_seq=start_seq)
        return await self._js.subscribe(
            _PREFIX + ">", stream=_STREAM, cb=enqueue, ordered_consumer=True, config=config
        )

    async def _full_resync(self, created: str, target: int) -> None:
        """Read the newest message of every key (agent/fullread.py) and replace the cache with
        what targets this agent, in one transaction."""
        keep: dict[str, CachedJob] = {}
        malformed: set[str] = set()
        untargeted: set[str] = set()
        seen: dict[str, int] = {}

        def take(msg: Msg, where: Delivery) -> None:
            change = self._classify(msg, where.stream_seq, where.pending, where.stored_ns / 1e9)
            # A key written during the read arrives again, newer: the newest counts.
            seen[change.key] = change.seq
            untargeted.discard(change.key)
            if isinstance(change.job, CachedJob):
                keep[change.key] = change.job
                malformed.discard(change.key)
            elif change.job is _MALFORMED:
                malformed.add(change.key)
            else:
                keep.pop(change.key, None)
                if change.untargeted:
                    untargeted.add(change.key)

        last_seq = await read_last_per_subject(self._nc, _STREAM, _PREFIX + ">", take) if target else 0
        before = await self._cache.revisions()
        gone = set(before) - keep.keys() - malformed
        position = SyncPosition(created, max(last_seq, target))
        await self._cache.apply(keep.values(), gone, position, seen=seen, replace_seen=True)
        self.position = position  # only once committed: tests and heartbeats read it
        changed = sorted(k for k, job in keep.items() if before.get(k) != job.revision)
        self._record("full resync", changed, gone - untargeted, gone & untargeted, len(keep))
        self._notify(set(keep) | gone)

    def _record(
        self, kind: str, changed: list[str], deleted: set[str], untargeted: set[str], count: int
    ) -> None:
        """One sync report entry (``natsched sync-report``): only keys this agent's cache held
        count as ``deleted`` or ``untargeted`` (a job that no longer targets this agent)."""
        self.report.append(
            {"at": time.time(), "kind": kind, "changed": changed[:REPORT_KEYS],
             "deleted": sorted(deleted)[:REPORT_KEYS], "untargeted": sorted(untargeted)[:REPORT_KEYS],
             "count": count, "revision": self.position.last_seq if self.position else 0}
        )  # fmt: skip
        self.entries += 1
        if kind == "full resync":
            self._tell(dict(self.report[-1]))

    async def _apply_batches(self, inbox: _Inbox, created: str, until: int | None) -> None:
        """Apply live changes in batches (one transaction each); return once ``until`` is reached."""
        while True:
            upserts: dict[str, CachedJob] = {}
            deletes: set[str] = set()
            untargeted: set[str] = set()
            seen: dict[str, int] = {}
            batch = await inbox.take()
            for change in batch:
                seen[change.key] = change.seq
                untargeted.discard(change.key)
                if isinstance(change.job, CachedJob):
                    upserts[change.key] = change.job
                    deletes.discard(change.key)
                elif change.job is None:
                    deletes.add(change.key)
                    upserts.pop(change.key, None)
                    if change.untargeted:
                        untargeted.add(change.key)
            held = await self._cache.present(deletes) if deletes else set()
            position = SyncPosition(created, batch[-1].seq)
            await self._cache.apply(upserts.values(), deletes, position, seen=seen)
            self.position = position
            if upserts or held:
                count = len(upserts) + len(held)
                self._record("changes", sorted(upserts), held - untargeted, held & untargeted, count)
            self._notify(set(upserts) | deletes)
            if until is not None and position.last_seq >= until:
                return

    async def _check_stream(self, created: str) -> None:
        stalled_at: int | None = None
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                info = await self._js.stream_info(_STREAM)
            except NotFoundError:
                raise _Restart("bucket deleted") from None
            ours = self.position.last_seq if self.position else 0
            now_created = info.created.isoformat() if info.created else ""
            if now_created != created or info.state.last_seq < ours:
                raise _Restart("bucket recreated or purged")
            if info.state.last_seq == ours and info.config.max_msgs_per_subject == 1:
                seen = await self._cache.seen_count()
                if seen != info.state.messages:
                    self._force_full = True
                    raise _Restart(
                        f"bucket holds {info.state.messages} keys, the cache saw {seen}: history was purged"
                    )
            if info.state.last_seq > ours:
                # Behind twice in a row without progress: the consumer lost its way; resume afresh.
                if stalled_at == ours:
                    raise _Restart(
                        f"no progress at revision {ours} while the bucket is at {info.state.last_seq}"
                    )
                stalled_at = ours
            else:
                stalled_at = None

    def _notify(self, keys: set[str]) -> None:
        if not keys:
            return
        for listener in self.listeners:
            try:
                listener(keys)
            except Exception:  # noqa: BLE001 - a listener bug must not stop syncing
                log.exception("job change listener failed")
