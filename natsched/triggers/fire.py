"""When does a trigger fire? Dispatch from a trigger model to its kind's arithmetic.

Every function takes aware datetimes in any zone and returns aware UTC datetimes. Only
cron, interval and once triggers are time-based; the others (file, event, subject) fire
on something happening, so they have no fire times here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from natsched.models import (
    CronTrigger,
    EventTrigger,
    FileTrigger,
    IntervalTrigger,
    JobSpec,
    OnceTrigger,
    SubjectTrigger,
    Trigger,
)
from natsched.triggers.cron import next_cron_fire, previous_cron_fires
from natsched.triggers.interval import jitter_offset, next_interval_fire, previous_interval_fires
from natsched.triggers.once import next_once_fire, previous_once_fires

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

TimeTrigger = CronTrigger | IntervalTrigger | OnceTrigger

_KINDS: dict[type[Trigger], str] = {
    CronTrigger: "cron",
    IntervalTrigger: "interval",
    OnceTrigger: "once",
    FileTrigger: "file",
    EventTrigger: "event",
    SubjectTrigger: "subject",
}


def utc(timestamp: float) -> datetime:
    """An epoch timestamp (as stored in cursors) as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC)


def time_triggers(spec: JobSpec) -> list[TimeTrigger]:
    """The job's triggers that fire at computed instants (cron, interval, once)."""
    return [t for t in spec.triggers if isinstance(t, CronTrigger | IntervalTrigger | OnceTrigger)]


def trigger_kind(trigger: Trigger) -> str:
    """The trigger's kind as runs and events name it: cron, interval, once, file, event, subject."""
    return _KINDS[type(trigger)]


def next_fire(trigger: Trigger, after: datetime) -> datetime | None:
    """First fire instant strictly after ``after``; None if it never fires again or is not time-based."""
    if isinstance(trigger, CronTrigger):
        return next_cron_fire(trigger.cron, trigger.timezone, after)
    if isinstance(trigger, IntervalTrigger):
        return next_interval_fire(trigger.every, trigger.start, after)
    if isinstance(trigger, OnceTrigger):
        return next_once_fire(trigger.at, after)
    return None


def previous_fires(trigger: Trigger, at_or_before: datetime, count: int) -> list[datetime]:
    """The latest ``count`` fire instants at or before ``at_or_before``, newest first.

    The same instants ``next_fire`` steps through, found walking back from
    ``at_or_before``: the work is bounded by ``count``, however old the last firing is.
    """
    if isinstance(trigger, CronTrigger):
        return previous_cron_fires(trigger.cron, trigger.timezone, at_or_before, count)
    if isinstance(trigger, IntervalTrigger):
        return previous_interval_fires(trigger.every, trigger.start, at_or_before, count)
    if isinstance(trigger, OnceTrigger):
        return previous_once_fires(trigger.at, at_or_before, count)
    return []


def next_job_fire(spec: JobSpec, after: float) -> tuple[float, str] | None:
    """The earliest fire of any of ``spec``'s time triggers after ``after`` (epoch seconds),
    with the kind of trigger that fires then; None if none fires again."""
    best: tuple[float, str] | None = None
    for trigger in time_triggers(spec):
        at = next_fire(trigger, utc(after))
        if at is not None and (best is None or at.timestamp() < best[0]):
            best = (at.timestamp(), trigger_kind(trigger))
    return best
