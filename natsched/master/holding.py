"""The master's side of calendars and job pauses (see ``natsched/calendars.py``).

Every run the master decides on its own (a schedule slot, a chain step, a subject
message) asks ``admit`` first. A held-back run is either recorded ``skipped`` with the
reason (agent ``none``: it never reached one) or, for a job paused with ``mode = "queue"``,
kept and started when the pause is lifted.

Queued runs are kept in ``natsched_state`` (key ``held.<group>.<job>.<id>``, at most
``MAX_QUEUED`` per job), not in a master's memory, so a master that stops or crashes drops
none: the leader starts them once the pause is lifted (also a leader that took over later),
each taken with a compare-and-set delete so two masters never start one twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.calendars import PAUSE_JOB_PREFIX, Holds
from natsched.errors import CodecError, SpecError
from natsched.events import RunEvent, RunState, new_run_id
from natsched.groupsettings import GroupSettings, parse_group_settings
from natsched.kvscan import scan
from natsched.master.dispatch import Dispatcher
from natsched.master.jobindex import JobIndex
from natsched.master.putback import put_back_from_history
from natsched.master.recording import publish_event
from natsched.models import JobSpec
from natsched.runmessages import RunReply
from natsched.vocab import NO_AGENT, RunTrigger, run_trigger

log = logging.getLogger(__name__)
MAX_QUEUED = 100


@dataclass(frozen=True, kw_only=True, slots=True)
class HeldRun:
    """What to dispatch for a run: now if admitted, or when its job's pause is lifted."""

    trigger: RunTrigger
    scheduled_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)
    base_id: str | None = None

    def encode(self) -> bytes:
        return codec.pack(
            {
                "trigger": self.trigger.value,
                "scheduled_at": self.scheduled_at,
                "env": self.env,
                "detail": self.detail,
                "base_id": self.base_id,
            }
        )

    @classmethod
    def decode(cls, data: bytes, key: str) -> HeldRun:
        obj = codec.unpack(data, key)
        try:
            return cls(
                trigger=run_trigger(str(obj["trigger"])),
                scheduled_at=None if obj.get("scheduled_at") is None else float(obj["scheduled_at"]),
                env={str(k): str(v) for k, v in (obj.get("env") or {}).items()},
                detail={str(k): str(v) for k, v in (obj.get("detail") or {}).items()},
                base_id=None if obj.get("base_id") is None else str(obj["base_id"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CodecError(f"{key}: not a held run ({exc})") from None


class Holding:
    def __init__(
        self,
        settings: KeyValue,
        state: KeyValue,
        js: JetStreamContext,
        dispatcher: Dispatcher,
        index: JobIndex,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = settings
        self._state = state
        self._js = js
        self._dispatcher = dispatcher
        self._index = index
        self._clock = clock
        self.holds = Holds()
        self.groups: dict[str, GroupSettings] = {}  # replicated group settings (notify targets)
        self.lifted = asyncio.Event()  # a job pause went: the leader looks at the held runs

    async def watch(self) -> None:
        watcher = await self._kv.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            try:
                value = None if deleted else codec.unpack(entry.value or b"", entry.key)
                self.holds.apply(entry.key, value)
                self._apply_group(entry.key, value)
            except (CodecError, SpecError, TypeError, ValueError) as exc:
                log.warning("ignoring setting %s: %s", entry.key, exc)
                if not codec.is_packed_map(entry.value):  # no master wrote it (see putback.py)
                    await put_back_from_history(self._kv, subjects.SETTINGS_BUCKET, entry.key, entry.revision)
                continue
            if entry.key.startswith(PAUSE_JOB_PREFIX) and deleted:
                self.lifted.set()

    def _apply_group(self, key: str, value: dict[str, object] | None) -> None:
        names = subjects.split_group_settings_key(key)
        if names is None or names[1] is not None:  # tag layers hold no notify targets
            return
        group = names[0]
        if value is None:
            self.groups.pop(group, None)
        else:
            self.groups[group] = parse_group_settings(value, group)

    async def admit(self, spec: JobSpec, run: HeldRun) -> bool:
        """True: go ahead now. False: held back (recorded skipped, or kept to run on resume)."""
        at = run.scheduled_at
        action, reason = self.holds.job_hold(
            spec.calendar, spec.key, run.trigger, self._clock() if at is None else at
        )
        if not action:
            return True
        if action == "queue":
            held = await scan(self._js, subjects.STATE_BUCKET, subjects.held_runs(spec.key))
            if len(held) < MAX_QUEUED:
                await self._state.put(subjects.held_run_key(spec.key, new_run_id()), run.encode())
                log.info("%s %s run queued: %s", spec.key, run.trigger, reason)
                return False
            reason = f"{reason}; {MAX_QUEUED} runs already queued"
        event = RunEvent(
            run_id=new_run_id(),
            job=spec.key,
            agent=NO_AGENT,
            state=RunState.SKIPPED,
            trigger=run.trigger,
            scheduled_at=at,
            reason=reason,
        )
        log.info("%s %s run skipped: %s", spec.key, run.trigger, reason)
        await publish_event(self._js, event)
        return False

    async def release_lifted(self) -> None:
        """The leader's duty: start the held runs whose job is no longer paused, now and on
        every lifted pause (oldest first, each taken by a compare-and-set delete)."""
        while True:
            self.lifted.clear()
            try:
                await self._release()
            except Exception as exc:  # noqa: BLE001 - NATS trouble: tried again at the next lift
                log.warning("held runs not released now: %r", exc)
                await asyncio.sleep(1.0)
                self.lifted.set()
            await self.lifted.wait()

    async def _release(self) -> None:
        """Dispatch each held run, then drop its key: a leader that dies in between leaves the key,
        and the next one dispatches the run again with the same run ids (derived from the key),
        which agents answer without running twice (dropped first, a death in between lost it)."""
        held = await scan(self._js, subjects.STATE_BUCKET, subjects.HELD_RUNS)
        for key, entry in sorted(held.items(), key=lambda item: item[1].revision):
            job = subjects.held_run_job(key)
            if job in self.holds.job_pauses:
                continue
            spec = self._index.jobs.get(job)
            try:
                run = HeldRun.decode(entry.value, key)
            except CodecError as exc:
                log.warning("dropped held run %s: %s", key, exc)
                run = None
            if spec is None and run is not None:
                log.warning("held run %s dropped: job %s no longer exists", key, job)
            elif spec is not None and run is not None:
                log.info("%s resumed: starting a queued %s run", job, run.trigger)
                replies = await self._dispatch(
                    spec, replace(run, base_id=run.base_id or key.rsplit(".", 1)[1])
                )
                for reply in replies:
                    if not reply.ok:
                        log.warning("resumed %s run: %s on %s", job, reply.reason, reply.agent or "-")
            try:
                await self._state.delete(key, last=entry.revision)
            except Exception as exc:  # noqa: BLE001 - taken by another master, or NATS trouble:
                # left, it is dispatched again with the same run ids, which changes nothing
                log.debug("held run %s not dropped now: %r", key, exc)

    async def _dispatch(self, spec: JobSpec, run: HeldRun) -> list[RunReply]:
        return await self._dispatcher.dispatch(
            spec,
            trigger=run.trigger,
            scheduled_at=run.scheduled_at,
            env=run.env,
            detail=run.detail,
            base_id=run.base_id,
        )
