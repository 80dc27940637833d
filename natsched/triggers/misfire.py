"""Which slots to fire now, given the last slot that fired and the job's misfire policy.

Of the slots in ``(last_fired, now]``, the latest one is *on time* if it is at most
``grace`` seconds old; every other one was *missed* (nobody could fire it: the agent or
master was down, or the job was just re-enabled). The policies:

- ``skip``: fire the on-time slot, if there is one; drop the missed ones.
- ``run-once``: if anything was missed or is due, fire once, for the latest slot.
- ``run-all``: fire every missed and due slot, oldest first, but only the latest ``cap``.

``last_fired=None`` means the job never fired (new): nothing is missed, only an on-time
slot fires. The work is bounded by ``cap`` however long ago ``last_fired`` was: the slots
are found walking back from ``now`` (a per-second job down for a week does not walk 600k).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from natsched.triggers.base import Trigger
from natsched.triggers.fire import previous_fires

__all__ = ["Misfire", "due_slots", "latest_slot_at_or_before"]


class Misfire(StrEnum):
    """What to do with slots that fell due while nobody could fire them (a job's ``misfire``)."""

    SKIP = "skip"
    RUN_ONCE = "run-once"
    RUN_ALL = "run-all"


def due_slots(
    trigger: Trigger,
    last_fired: datetime | None,
    now: datetime,
    policy: Misfire,
    cap: int,
    grace: float = 1.0,
) -> list[datetime]:
    """The slots to fire now, oldest first (aware UTC datetimes)."""
    if cap < 1:
        raise ValueError(f"misfire cap {cap} must be at least 1")
    backlog = policy is Misfire.RUN_ALL and last_fired is not None
    recent = previous_fires(trigger, now, cap if backlog else 1)  # newest first
    pending = [slot for slot in recent if last_fired is None or slot > last_fired]
    if not pending:
        return []
    if last_fired is None or policy is Misfire.SKIP:
        on_time = now - pending[0] <= timedelta(seconds=grace)
        return pending[:1] if on_time else []
    if policy is Misfire.RUN_ONCE:
        return pending[:1]
    return pending[::-1]


def latest_slot_at_or_before(trigger: Trigger, now: datetime) -> datetime | None:
    """The newest slot at or before ``now``: where to move a cursor past slots it skipped."""
    slots = previous_fires(trigger, now, 1)
    return slots[0] if slots else None
