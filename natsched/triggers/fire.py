"""When does a job fire? Its time triggers' instants, for the master's and the agent's schedulers.

Every function takes aware datetimes in any zone and returns aware UTC datetimes. Only
time triggers (``TimeTrigger``: cron, interval, once) have fire times; the others (file,
event, subject) fire on something happening.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from natsched.triggers.base import TimeTrigger, Trigger
from natsched.triggers.interval import jitter_offset
from natsched.vocab import RunTrigger

__all__ = [
    "TimeTrigger",
    "jitter_offset",
    "next_fire",
    "next_job_fire",
    "previous_fires",
    "time_triggers",
    "trigger_kind",
    "utc",
]


class Triggered(Protocol):
    """What these functions need of a job (a ``JobSpec``): its triggers."""

    @property
    def triggers(self) -> tuple[Trigger, ...]: ...


def utc(timestamp: float) -> datetime:
    """An epoch timestamp (as stored in cursors) as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC)


def time_triggers(spec: Triggered) -> list[TimeTrigger]:
    """The job's triggers that fire at computed instants (cron, interval, once)."""
    return [t for t in spec.triggers if isinstance(t, TimeTrigger)]


def trigger_kind(trigger: Trigger) -> RunTrigger:
    """The trigger's kind as runs and events name it: cron, interval, once, file, event, subject."""
    return trigger.kind


def next_fire(trigger: Trigger, after: datetime) -> datetime | None:
    """First fire instant strictly after ``after``; None if it never fires again or is not time-based."""
    return trigger.next_fire(after) if isinstance(trigger, TimeTrigger) else None


def previous_fires(trigger: Trigger, at_or_before: datetime, count: int) -> list[datetime]:
    """The latest ``count`` fire instants at or before ``at_or_before``, newest first ([] if not timed)."""
    return trigger.previous_fires(at_or_before, count) if isinstance(trigger, TimeTrigger) else []


def next_job_fire(spec: Triggered, after: float) -> tuple[float, RunTrigger] | None:
    """The earliest fire of any of ``spec``'s time triggers after ``after`` (epoch seconds),
    with the kind of trigger that fires then; None if none fires again."""
    best: tuple[float, RunTrigger] | None = None
    for trigger in time_triggers(spec):
        at = trigger.next_fire(utc(after))
        if at is not None and (best is None or at.timestamp() < best[0]):
            best = (at.timestamp(), trigger.kind)
    return best
