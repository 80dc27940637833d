"""Subject triggers: a job starts on every message published to a subject the operator names.

The patterns of the enabled jobs are the subjects of the stream ``NATSCHED_SUBJECTS``
(``master/subjectstream.py``), so a message published while no master runs is kept, and the
masters share one durable consumer on it (``natsched-subjects``): each message starts its
jobs once, also across a master crash (its run ids derive from the message's stream
sequence, so a redelivery repeats the same runs and agents run each id once). A plain
publish is enough; a JetStream publish (or a request) gets the stream's acknowledgement.
The body reaches the process as ``$NATSCHED_MESSAGE`` (UTF-8, at most the trigger's
``max_bytes``) and the subject as ``$NATSCHED_SUBJECT``; with a ``match`` table only JSON
bodies whose fields equal those values start the job. A body that is too big, not text, or
not matching is logged in one line and starts nothing; so is one nats-server made itself (a
JetStream acknowledgement or API answer, which any client can have sent to any subject).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from natsched import subjects
from natsched.connection import subscribe_inbound
from natsched.master import subjectstream
from natsched.master.dispatch import Dispatcher
from natsched.master.following import EventFollower
from natsched.master.holding import HeldRun, Holding
from natsched.master.jobindex import JobIndex
from natsched.master.subjectstream import SubjectStream, subject_matches
from natsched.models import JobSpec
from natsched.quietlog import Throttled
from natsched.triggers.subject import SubjectTrigger
from natsched.vocab import RunTrigger

_SUBJECT = (SubjectTrigger.key.encode(),)

log = logging.getLogger(__name__)
CLOSE_WAIT = 2.0
QUEUE = subjects.SUBJECT_TRIGGER_QUEUE
Pair = tuple[JobSpec, SubjectTrigger]
UNMATCHED_TRIES = 3  # deliveries of a message no job of ours matches, before it is dropped
UNMATCHED_DELAY = 1.0
LIVE_CONCURRENCY = 256  # messages of live-followed patterns being started at once
quiet = Throttled(log)  # a flood of refused messages: a line per 10 s, not one each


def field_at(body: Any, path: str) -> Any:
    """``body["a"]["b"]`` for path ``a.b``; a sentinel-free None when absent."""
    for part in path.split("."):
        if not isinstance(body, Mapping) or part not in body:
            return None
        body = body[part]
    return body


# Top-level fields of a JetStream publish acknowledgement (and of its error form).
_ACK_FIELDS = frozenset({"stream", "seq", "duplicate", "domain", "batch", "count", "val", "error"})


def _server_made(text: str) -> bool:
    """True if ``text`` is a JetStream acknowledgement or API answer, not a publisher's message.

    nats-server sends those to whatever reply subject a client names, unchecked against the
    client's permissions: an agent (writing its heartbeat) or the web role (asking a stream's
    info) could so have the server publish on a subject trigger's subject, and start a job
    neither may start. Their shapes are fixed: ``{"stream": str, "seq": int, …}``,
    ``{"error": {"code": int, …}, …}`` and ``{"type": "io.nats.…", …}``.
    """
    if not text.startswith("{"):
        return False
    try:
        body = json.loads(text)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    kind = body.get("type")
    if isinstance(kind, str) and kind.startswith("io.nats."):
        return True
    if not body.keys() <= _ACK_FIELDS:
        return False
    error = body.get("error")
    acked = isinstance(body.get("stream"), str) and type(body.get("seq")) is int
    refused = isinstance(error, dict) and type(error.get("code")) is int
    return acked or refused


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
    if _server_made(text):
        return "body is nats-server's own answer to a client (a JetStream acknowledgement or API reply)"
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
        self,
        nc: Client,
        index: JobIndex,
        dispatcher: Dispatcher,
        holding: Holding,
        *,
        replicas: int = 1,
        live_nc: Client | None = None,
    ) -> None:
        self._nc = nc
        # Live patterns are anyone's subjects: their messages arrive on the master's requests
        # connection (a flood there cannot cut the lease's), bounded, a few hundred at a time.
        self._live_nc = live_nc or nc
        self._live_slots = asyncio.Semaphore(LIVE_CONCURRENCY)
        self._index = index
        self._dispatcher = dispatcher
        self._holding = holding
        self.stream = SubjectStream(nc.jetstream(), replicas=replicas)
        self.following: EventFollower | None = None
        self._wanted: dict[str, list[tuple[JobSpec, SubjectTrigger]]] = {}
        self._subjects_of: dict[str, set[str]] = {}  # job key -> the subjects it listens on
        self._changed = asyncio.Event()
        # Patterns another stream captures (the stream cannot keep them): core NATS, live only.
        self._live: dict[str, Subscription] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        index.on_keys(self._on_keys)
        self._on_keys(list(index.entries))  # the jobs the index holds already (loaded, or applied meanwhile)

    async def start(self) -> None:
        """The stream (as it is: the patterns follow once the index is complete) and our consumer."""
        await self.stream.ensure(None)
        self.following = EventFollower(
            self._nc.jetstream(), QUEUE, (), self._on_message, stream=subjectstream.STREAM, everything=True
        )
        await self.following.start()

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
            spec = self._index.spec_if(key, _SUBJECT)  # jobs without a subject trigger stay undecoded
            if spec is None or not spec.enabled:
                continue
            for trigger in spec.triggers:
                if isinstance(trigger, SubjectTrigger):
                    self._wanted[trigger.subject] = [*self._wanted.get(trigger.subject, []), (spec, trigger)]
                    self._subjects_of.setdefault(key, set()).add(trigger.subject)
        self._changed.set()

    async def run(self) -> None:
        """Follow the job index: the stream captures exactly the patterns jobs listen on."""
        await self._index.ready.wait()  # the whole picture, not a partial one
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.stream.ensure(list(self._wanted))
            await self._follow_live()

    async def _follow_live(self) -> None:
        """A pattern the stream cannot keep (another stream captures it: a definition older than
        that check, or a stream made later) is followed as before streams, with a core
        subscription: its messages start jobs while a master runs, and are lost while none does."""
        kept = set(self.stream.subjects)
        live = {pattern for pattern in self._wanted if pattern not in kept}
        for pattern in sorted(set(self._live) - live):
            await self._live.pop(pattern).unsubscribe()
        for pattern in sorted(live - set(self._live)):
            self._live[pattern] = await subscribe_inbound(
                self._live_nc, pattern, queue=QUEUE, cb=self._on_live
            )
            log.warning(
                "%s: another stream captures it; following it live (not kept while no master runs)", pattern
            )

    def _matching(self, subject: str, *, live: bool) -> list[Pair]:
        """The jobs a message starts: of the stream's patterns, or of the live ones (never both,
        or a message on both would start a job twice)."""
        return [
            pair
            for pattern, pairs in list(self._wanted.items())
            if (pattern in self._live) == live and subject_matches(pattern, subject)
            for pair in pairs
        ]

    async def _on_live(self, msg: Msg) -> None:
        await self._live_slots.acquire()  # back-pressure: the subscription waits (and drops when full)
        task = asyncio.create_task(self._start_all(msg, self._matching(msg.subject, live=True), stored=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._live_slots.release())

    async def _start_all(
        self, msg: Msg, matched: list[tuple[JobSpec, SubjectTrigger]], *, stored: bool
    ) -> None:
        starts = []
        for spec, trigger in matched:
            why = refusal(trigger, msg.data)
            if why:
                where = subjects.shown(msg.subject)
                quiet.log(
                    logging.WARNING,
                    "refused",
                    "%s on %s does not start %s: %s",
                    where,
                    trigger.subject,
                    spec.key,
                    why,
                )
                continue
            base_id = message_run_id(msg, spec, trigger) if stored else None
            starts.append(self._start(spec, msg.subject, msg.data.decode("utf-8"), base_id))
        # All at once: a job whose agent is slow to answer holds back none of the others.
        await asyncio.gather(*starts)  # each _start logs its own failure

    async def _on_message(self, msg: Msg) -> None:
        await self._index.ready.wait()
        matched = self._matching(msg.subject, live=False)
        if not matched:
            # Another master may have added the pattern from a newer view of the jobs than ours.
            if msg.metadata.num_delivered < UNMATCHED_TRIES:
                await msg.nak(delay=UNMATCHED_DELAY)
                return
            log.warning("%s: no enabled job listens on it (any more); message dropped", msg.subject)
        await self._start_all(msg, matched, stored=True)
        await msg.ack()

    async def _start(self, spec: JobSpec, subject: str, body: str, base_id: str | None) -> None:
        try:
            held = HeldRun(
                trigger=RunTrigger.SUBJECT,
                env=_message_env(subject, body),
                detail={"subject": subject},
                base_id=base_id,
            )
            if await self._holding.admit(spec, held):
                await self._dispatch(spec, subject, body, base_id)
        except Exception:  # a dispatch bug must not stop the others
            log.exception("%s from %s: dispatch failed", spec.key, subject)

    async def _dispatch(self, spec: JobSpec, subject: str, body: str, base_id: str | None) -> None:
        replies = await self._dispatcher.dispatch(
            spec,
            trigger=RunTrigger.SUBJECT,
            env=_message_env(subject, body),
            detail={"subject": subject},
            base_id=base_id,
        )
        for reply in replies:
            if not reply.ok:
                log.warning("%s from %s: %s on %s", spec.key, subject, reply.reason, reply.agent or "-")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: a task inside nats-py may swallow its cancellation; shutdown must not wait on it.
            await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT)


def message_run_id(msg: Msg, spec: JobSpec, trigger: SubjectTrigger) -> str:
    """The same run id on every delivery of one stored message (time prefix: when it was stored)."""
    meta = msg.metadata
    stored = meta.timestamp.timestamp()
    claim = f"{subjectstream.STREAM}.{meta.sequence.stream}.{stored:.6f}.{spec.key}.{trigger.subject}"
    return f"{int(stored * 1000):x}-{hashlib.sha256(claim.encode()).hexdigest()[:12]}"


def _message_env(subject: str, body: str) -> dict[str, str]:
    return {"NATSCHED_MESSAGE": body, "NATSCHED_SUBJECT": subject}
