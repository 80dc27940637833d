"""Triggers: when a job fires. Pure code: no I/O, no sleeping, no clock. Callers pass the
instants, so DST, misfire and catch-up are plain unit tests. Every function takes aware
datetimes (any zone) and returns aware UTC datetimes.

- ``next_fire(trigger, after)``: the first fire instant strictly after ``after``; None if
  the trigger never fires again (a past once trigger) or is not time-based (file, event,
  subject triggers).
- ``previous_fires(trigger, at_or_before, count)``: the latest ``count`` fire instants at
  or before an instant, newest first.
- ``due_slots(trigger, last_fired, now, policy, cap, grace)``: which slots to fire now
  under a misfire policy; ``latest_slot_at_or_before(trigger, now)`` to move a cursor.
- ``jitter_offset(job_key, slot, jitter)``: the same pseudo-random delay on every host.

One module per kind (``cron`` with the DST rule in its docstring, ``interval``, ``once``,
``file``, ``event``, ``subject``) holds the kind's dataclass, its job-file parse and
``to_dict``, and for time kinds its arithmetic; ``base`` says what a kind provides,
``registry`` lists the kinds, ``misfire`` applies the misfire policies. Nothing here
imports ``natsched.models``: the models are built from the kinds, not the other way round.
"""

from __future__ import annotations

from natsched.triggers.fire import next_fire, previous_fires
from natsched.triggers.interval import jitter_offset
from natsched.triggers.misfire import due_slots, latest_slot_at_or_before

__all__ = ["due_slots", "jitter_offset", "latest_slot_at_or_before", "next_fire", "previous_fires"]
