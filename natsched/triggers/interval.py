"""Interval triggers (``every``, ``start``, ``jitter``): a fixed grid ``start + k * every``
(k >= 0; start defaults to the Unix epoch).

Slots are computed from the grid, never by adding ``every`` to the last slot, so there is
no drift. The arithmetic is in whole microseconds (integers): with float seconds, a slot
such as ``epoch + k * 0.1`` rounds differently from one call to the next, and "the next
slot strictly after the last one" can come back as the last one.

Jitter is not part of the grid: a runner delays a slot by ``jitter_offset``, which every
master and agent computes alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from natsched.errors import SpecError
from natsched.parsing import parse_datetime, parse_duration
from natsched.triggers.base import TimeTrigger
from natsched.vocab import RunTrigger

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(instant: datetime) -> int:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{instant.isoformat()} has no time zone; pass an aware datetime")
    return (instant - EPOCH) // _MICROSECOND


def _grid(every: float, start: datetime | None) -> tuple[int, int]:
    step = round(every * 1_000_000)
    if step <= 0:
        raise ValueError(f"interval {every}s is not positive")
    return (0 if start is None else _micros(start)), step


def _instant(micros: int) -> datetime:
    return EPOCH + micros * _MICROSECOND


def next_interval_fire(every: float, start: datetime | None, after: datetime) -> datetime:
    """The first grid slot strictly after ``after`` (UTC)."""
    anchor, step = _grid(every, start)
    t = _micros(after)
    if t < anchor:
        return _instant(anchor)
    return _instant(anchor + ((t - anchor) // step + 1) * step)


def previous_interval_fires(
    every: float, start: datetime | None, at_or_before: datetime, count: int
) -> list[datetime]:
    """The latest ``count`` grid slots at or before ``at_or_before``, newest first (UTC)."""
    anchor, step = _grid(every, start)
    t = _micros(at_or_before)
    if t < anchor or count <= 0:
        return []
    k = (t - anchor) // step
    return [_instant(anchor + i * step) for i in range(k, max(-1, k - count), -1)]


def jitter_offset(job_key: str, slot: datetime, jitter: float) -> float:
    """A deterministic pseudo-random delay in ``[0, jitter)`` seconds for one job's slot.

    Seeded from (job key, slot) with a cryptographic hash rather than ``hash()`` (salted
    per process) or ``random`` (implementation-defined), so every master and agent, on any
    Python, delays the same slot by the same amount, while different jobs due at the same
    instant spread out.
    """
    if jitter <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{job_key}@{_micros(slot)}".encode(), digest_size=8).digest()
    fraction = (int.from_bytes(digest, "big") >> 11) / 2**53  # 53 bits: exact in a float, < 1
    # fraction * jitter can still round up to jitter itself; the interval is half-open.
    return min(fraction * jitter, math.nextafter(jitter, 0.0))


@dataclass(frozen=True, kw_only=True, slots=True)
class IntervalTrigger(TimeTrigger):
    """Fire every ``every`` seconds on a grid anchored at ``start`` (epoch if absent)."""

    kind = RunTrigger.INTERVAL
    key = "every"
    fields = frozenset({"every", "start", "jitter"})
    example = {"every": "90s", "start": "2026-01-01T00:00:30+00:00", "jitter": 5}

    every: float
    start: datetime | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.every < 0.1:
            raise SpecError(
                f"interval {self.every}s is shorter than the 0.1s minimum", field="triggers.every"
            )
        if self.start is not None and self.start.tzinfo is None:
            raise SpecError("needs a time zone offset, e.g. 2026-01-01T00:00:00Z", field="triggers.start")
        if not 0 <= self.jitter < self.every:
            raise SpecError("must be at least 0 and shorter than the interval", field="triggers.jitter")

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        start = data.get("start")
        return cls(
            every=parse_duration(data["every"], "triggers.every"),
            start=None if start is None else parse_datetime(start, "triggers.start"),
            jitter=parse_duration(data.get("jitter", 0), "triggers.jitter"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"every": self.every}
        if self.start is not None:
            out["start"] = self.start.isoformat()
        if self.jitter:
            out["jitter"] = self.jitter
        return out

    def describe(self) -> str:
        return f"every {self.every:g}s"

    def next_fire(self, after: datetime) -> datetime:
        return next_interval_fire(self.every, self.start, after)

    def previous_fires(self, at_or_before: datetime, count: int) -> list[datetime]:
        return previous_interval_fires(self.every, self.start, at_or_before, count)
