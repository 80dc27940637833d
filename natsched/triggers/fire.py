"""Given a time-based trigger and an instant, when does it fire?

No I/O, no sleeping, no global clock: callers pass the instants explicitly, so DST,
misfire and catch-up are plain unit tests. Every function takes and returns aware
datetimes (returned in UTC).

- ``next_fire(trigger, after)``: the first fire instant strictly after ``after``.
- ``previous_fires(trigger, at_or_before, count)``: the latest ``count`` fire instants
  at or before an instant, newest first (for misfire handling).
"""

from __future__ import annotations

from datetime import datetime

from natsched.models import CronTrigger, IntervalTrigger, OnceTrigger, Trigger
from natsched.triggers.cron import next_cron_fire, previous_cron_fires
from natsched.triggers.interval import jitter_offset, next_interval_fire, previous_interval_fires

__all__ = ["jitter_offset", "next_fire", "previous_fires"]


def next_fire(trigger: Trigger, after: datetime) -> datetime | None:
    """First fire instant strictly after ``after``; None if it never fires again or is not time-based."""
    if isinstance(trigger, CronTrigger):
        return next_cron_fire(trigger.cron, trigger.timezone, after)
    if isinstance(trigger, IntervalTrigger):
        return next_interval_fire(trigger.every, trigger.start, after)
    if isinstance(trigger, OnceTrigger):
        return trigger.at if trigger.at > after else None
    return None


def previous_fires(trigger: Trigger, at_or_before: datetime, count: int) -> list[datetime]:
    """The latest ``count`` fire instants at or before ``at_or_before``, newest first."""
    if isinstance(trigger, CronTrigger):
        return previous_cron_fires(trigger.cron, trigger.timezone, at_or_before, count)
    if isinstance(trigger, IntervalTrigger):
        return previous_interval_fires(trigger.every, trigger.start, at_or_before, count)
    if isinstance(trigger, OnceTrigger):
        return [trigger.at] if trigger.at <= at_or_before and count > 0 else []
    return []
