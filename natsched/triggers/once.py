"""Once triggers: a single instant."""

from __future__ import annotations

from datetime import UTC, datetime


def next_once_fire(at: datetime, after: datetime) -> datetime | None:
    """``at`` (in UTC) if it is strictly after ``after``; None once it has passed."""
    return at.astimezone(UTC) if at > after else None


def previous_once_fires(at: datetime, at_or_before: datetime, count: int) -> list[datetime]:
    """``[at]`` (in UTC) if it is at or before ``at_or_before`` and ``count`` allows one."""
    return [at.astimezone(UTC)] if at <= at_or_before and count > 0 else []
