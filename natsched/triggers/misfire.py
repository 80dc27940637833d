"""Which slots to fire now, given the last slot that fired and the job's misfire policy.

A slot in ``(last_fired, now - grace]`` was missed (nobody could fire it: the agent or
master was down); a slot in ``(now - grace, now]`` is simply on time. The work is
bounded by ``cap`` however long ago ``last_fired`` was (a per-second job after a week
down does not walk 600k slots).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from natsched.models import Misfire, Trigger
from natsched.triggers.fire import previous_fires


def due_slots(
    trigger: Trigger,
    last_fired: datetime | None,
    now: datetime,
    policy: Misfire,
    cap: int,
    grace: float = 1.0,
) -> list[datetime]:
    """The slots to fire now, oldest first.

    ``last_fired=None`` means the job never fired (new, or re-enabled): only an on-time
    slot counts, nothing older is "missed".
    """
    recent = previous_fires(trigger, now, max(cap, 1))
    pending = [slot for slot in recent if last_fired is None or slot > last_fired]
    on_time_after = now - timedelta(seconds=grace)
    on_time = [slot for slot in pending if slot > on_time_after]
    if last_fired is None or policy is Misfire.SKIP:
        return on_time[:1]
    if policy is Misfire.RUN_ONCE:
        return pending[:1]  # newest first: the latest slot
    return sorted(pending)[-cap:]


__all__ = ["due_slots", "missed_count"]


def missed_count(trigger: Trigger, last_fired: datetime, now: datetime, limit: int = 10_000) -> int:
    """How many slots fell in ``(last_fired, now]``, counting up to ``limit`` (for reports)."""
    return sum(1 for slot in previous_fires(trigger, now, limit) if slot > last_fired)
