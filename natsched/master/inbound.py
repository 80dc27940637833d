"""Subject triggers: a job starts on every message published to a subject the operator names.

Masters subscribe to each subject pattern named by an enabled job in one queue group
(``natsched-subjects``), so each message starts the job once. These are core NATS
messages: one published while no master runs is not seen (publish through JetStream and
a stream if that matters). The body reaches the process as ``$NATSCHED_MESSAGE`` (UTF-8,
at most the trigger's ``max_bytes``) and the subject as ``$NATSCHED_SUBJECT``; with a
``match`` table only JSON bodies whose fields equal those values start the job. A body
that is too big, not text, or not matching is logged in one line and starts nothing.
The master's NATS user needs subscribe permission on these subjects.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from natsched import subjects
from natsched.master.dispatch import Dispatcher
from natsched.master.holding import HeldRun, Holding
from natsched.master.jobindex import JobIndex
from natsched.models import JobSpec
from natsched.triggers.subject import SubjectTrigger
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)
QUEUE = subjects.SUBJECT_TRIGGER_QUEUE


def field_at(body: Any, path: str) -> Any:
    """``body["a"]["b"]`` for path ``a.b``; a sentinel-free None when absent."""
    for part in path.split("."):
        if not isinstance(body, Mapping) or part not in body:
            return None
        body = body[part]
    return body


def refusal(trigger: SubjectTrigger, data: bytes) -> str:
    """Why this message does not start the job ('' if it does)."""
    if len(data) > trigger.max_bytes:
        return f"body of {len(data)} bytes is over max_bytes {trigger.max_bytes}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8 text (it is passed in an environment variable)"
    if "\0" in text:
        return "body contains a NUL byte (it is passed in an environment variable)"
    if trigger.match:
        try:
            body = json.loads(text)
        except ValueError:
            return "body is not JSON, and the trigger has a match table"
        for path, wanted in trigger.match.items():
            if field_at(body, path) != wanted:
                return f"{path} is not {wanted!r}"
    return ""


class SubjectTriggers:
    def __init__(
        self, nc: Client, index: JobIndex, dispatcher: Dispatcher, holding: Holding, *, concurrency: int = 256
    ) -> None:
        self._nc = nc
        self._index = index
        self._dispatcher = dispatcher
        self._holding = holding
        self._subs: dict[str, Subscription] = {}
        self._wanted: dict[str, list[tuple[JobSpec, SubjectTrigger]]] = {}
        self._subjects_of: dict[str, set[str]] = {}  # job key -> the subjects it listens on
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        index.on_keys(self._on_keys)
        self._on_keys(list(index.jobs))  # the jobs the index holds already (loaded, or applied meanwhile)

    def _on_keys(self, keys: list[str]) -> None:
        """Update what each subject starts for the changed jobs only (100k others stay untouched)."""
        for key in keys:
            for subject in self._subjects_of.pop(key, set()):
                # New lists, never changed in place: a message handler may be walking the old one.
                left = [(spec, t) for spec, t in self._wanted.get(subject, []) if spec.key != key]
                if left:
                    self._wanted[subject] = left
                else:
                    self._wanted.pop(subject, None)
            spec = self._index.jobs.get(key)
            if spec is None or not spec.enabled:
                continue
            for trigger in spec.triggers:
                if isinstance(trigger, SubjectTrigger):
                    self._wanted[trigger.subject] = [*self._wanted.get(trigger.subject, []), (spec, trigger)]
                    self._subjects_of.setdefault(key, set()).add(trigger.subject)
        self._changed.set()

    async def run(self) -> None:
        """Follow the job index: subscribe to new subjects, drop the ones no job names any more."""
        await self._index.ready.wait()  # subscribe for the whole picture, not a partial one
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = self._wanted
            for subject in sorted(set(self._subs) - set(wanted)):
                await self._subs.pop(subject).unsubscribe()
            for subject in sorted(set(wanted) - set(self._subs)):
                try:
                    self._subs[subject] = await self._nc.subscribe(
                        subject, queue=QUEUE, cb=self._handler(subject)
                    )
                    log.info(
                        "listening on %s for %s",
                        subject,
                        ", ".join(j.key for j, _ in wanted.get(subject, [])),
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. no permission: say so, keep the others
                    log.error("cannot subscribe to %s: %r", subject, exc)

    def _handler(self, pattern: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            await self._on_message(pattern, msg)

        return on_message

    async def _on_message(self, pattern: str, msg: Msg) -> None:
        for spec, trigger in self._wanted.get(pattern, []):
            why = refusal(trigger, msg.data)
            if why:
                log.warning("%s on %s does not start %s: %s", msg.subject, pattern, spec.key, why)
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._start(spec, msg.subject, msg.data.decode("utf-8")))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start(self, spec: JobSpec, subject: str, body: str) -> None:
        try:
            held = HeldRun(
                trigger=RunTrigger.SUBJECT, env=_message_env(subject, body), detail={"subject": subject}
            )
            if await self._holding.admit(spec, held):
                await self._dispatch(spec, subject, body)
        except Exception:  # a dispatch bug must not stop the subscription
            log.exception("%s from %s: dispatch failed", spec.key, subject)
        finally:
            self._slots.release()

    async def _dispatch(self, spec: JobSpec, subject: str, body: str) -> None:
        replies = await self._dispatcher.dispatch(
            spec,
            trigger=RunTrigger.SUBJECT,
            env=_message_env(subject, body),
            detail={"subject": subject},
        )
        for reply in replies:
            if not reply.ok:
                log.warning("%s from %s: %s on %s", spec.key, subject, reply.reason, reply.agent or "-")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _message_env(subject: str, body: str) -> dict[str, str]:
    return {"NATSCHED_MESSAGE": body, "NATSCHED_SUBJECT": subject}
