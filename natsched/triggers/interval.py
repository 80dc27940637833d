"""Interval triggers: a fixed grid ``start + k * every`` (start defaults to the Unix epoch).

Fire times are computed from the grid, never accumulated, so there is no drift.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _anchor(start: datetime | None) -> float:
    return (start or EPOCH).timestamp()


def next_interval_fire(every: float, start: datetime | None, after: datetime) -> datetime:
    anchor = _anchor(start)
    t = after.timestamp()
    if t < anchor:
        return datetime.fromtimestamp(anchor, UTC)
    k = math.floor((t - anchor) / every) + 1
    slot = anchor + k * every
    if slot <= t:  # float rounding at an exact grid point
        slot += every
    return datetime.fromtimestamp(slot, UTC)


def previous_interval_fires(
    every: float, start: datetime | None, at_or_before: datetime, count: int
) -> list[datetime]:
    anchor = _anchor(start)
    t = at_or_before.timestamp()
    if t < anchor or count <= 0:
        return []
    k = math.floor((t - anchor) / every)
    return [datetime.fromtimestamp(anchor + i * every, UTC) for i in range(k, max(-1, k - count), -1)]


def jitter_offset(job_key: str, slot: datetime, jitter: float) -> float:
    """A deterministic offset in [0, jitter): every master and agent computes the same one."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{job_key}@{slot.timestamp():.6f}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * jitter


def as_timedelta(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
