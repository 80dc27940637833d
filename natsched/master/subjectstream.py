"""The stream that keeps subject-trigger messages while no master runs (``NATSCHED_SUBJECTS``).

Its subjects are the patterns of the enabled jobs' subject triggers; every master keeps them
in step with its job index (all compute the same set, so their updates agree). With no
pattern it holds only ``SUBJECTS_IDLE``, which nobody publishes to. Messages are kept at
most ``MAX_AGE`` and ``MAX_BYTES``: a master down longer than that starts the jobs of what
is left. The masters share one durable consumer on it (``master/inbound.py``).

JetStream stores a subject in one stream only: a pattern that overlaps a subject of another
stream (the operator's own, or a KV bucket's) cannot be captured. ``apply`` refuses such a
pattern, naming the stream; a pattern that overlaps anyway (a stream made before the job was
enabled) is logged and left out: ``inbound`` follows it live, with a core subscription.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from natsched import subjects
from natsched.errors import SpecError
from natsched.models import JobSpec
from natsched.triggers.subject import SubjectTrigger

log = logging.getLogger(__name__)
STREAM = subjects.SUBJECTS_STREAM
MAX_AGE = 86400.0
MAX_BYTES = 256 * 1024**2


def subject_matches(pattern: str, subject: str) -> bool:
    """Does ``subject`` (no wildcards) match ``pattern`` (``*`` one token, ``>`` the rest)?"""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def patterns_overlap(a: str, b: str) -> bool:
    """Is there a subject that both patterns match?"""
    left, right = a.split("."), b.split(".")
    for x, y in zip(left, right, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


async def other_streams(js: JetStreamContext) -> dict[str, list[str]]:
    """Every stream's subjects except our own."""
    return {
        info.config.name: list(info.config.subjects or [])
        for info in await js.streams_info()
        if info.config.name and info.config.name != STREAM
    }


def check_subjects_free(specs: Mapping[str, JobSpec], streams: Mapping[str, list[str]]) -> None:
    """SpecError for the first subject-trigger pattern that another stream already captures."""
    for key, spec in sorted(specs.items()):
        for trigger in spec.triggers:
            if not isinstance(trigger, SubjectTrigger):
                continue
            for name, captured in sorted(streams.items()):
                taken = next((s for s in captured if patterns_overlap(trigger.subject, s)), None)
                if taken is not None:
                    raise SpecError(
                        f"{trigger.subject!r} overlaps {taken!r} of stream {name}: JetStream keeps a "
                        f"subject in one stream, so natsched could not keep these messages while no "
                        f"master runs; use another subject, or take it out of {name}",
                        job=key,
                        field="triggers.subject",
                    )


class SubjectStream:
    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self.subjects: list[str] = []

    async def ensure(self, patterns: Iterable[str] | None) -> None:
        """Create the stream, or set its subjects to ``patterns`` (None: keep what it has)."""
        wanted = sorted(set(patterns or ())) or [subjects.SUBJECTS_IDLE]
        try:
            info = await self._js.stream_info(STREAM)
        except NotFoundError:
            await self._js.add_stream(
                api.StreamConfig(
                    name=STREAM,
                    subjects=wanted,
                    retention=api.RetentionPolicy.LIMITS,
                    max_age=MAX_AGE,
                    max_bytes=MAX_BYTES,
                    num_replicas=self._replicas,
                    description="natsched subject-trigger messages",
                )
            )
            self.subjects = wanted
            return
        self.subjects = sorted(info.config.subjects or [])
        if patterns is None or self.subjects == wanted:
            return
        usable = await self._without_overlaps(wanted)
        if usable != self.subjects:
            info.config.subjects = usable
            await self._js.update_stream(info.config)
            self.subjects = usable
            log.info("stream %s keeps %s", STREAM, ", ".join(usable))

    async def _without_overlaps(self, wanted: list[str]) -> list[str]:
        streams = await other_streams(self._js)
        usable = []
        for pattern in wanted:
            clash = [
                name
                for name, captured in streams.items()
                if any(patterns_overlap(pattern, s) for s in captured)
            ]
            if clash:
                log.error(
                    "subject trigger %s overlaps stream %s: its messages are not kept", pattern, clash[0]
                )
            else:
                usable.append(pattern)
        return usable or [subjects.SUBJECTS_IDLE]
