"""Pure trigger functions: no I/O, no sleeping, no clock. Callers pass the instants, so DST,
misfire and catch-up are plain unit tests. Every function takes aware datetimes (any zone)
and returns aware UTC datetimes.

- ``next_fire(trigger, after)``: the first fire instant strictly after ``after``; None if
  the trigger never fires again (a past once trigger) or is not time-based (file, event,
  subject triggers).
- ``previous_fires(trigger, at_or_before, count)``: the latest ``count`` fire instants at
  or before an instant, newest first.
- ``due_slots(trigger, last_fired, now, policy, cap, grace)``: which slots to fire now
  under a misfire policy; ``latest_slot_at_or_before(trigger, now)`` to move a cursor.
- ``jitter_offset(job_key, slot, jitter)``: the same pseudo-random delay on every host.

The arithmetic lives in one module per kind: ``cron`` (and the DST rule, in its
docstring), ``interval``, ``once``; ``fire`` dispatches on the trigger's type, ``misfire``
applies the policies.

These names are loaded on first use (PEP 562) rather than imported here: ``models``
imports ``triggers.cron`` for validation, which runs this ``__init__`` first, and
``triggers.fire`` needs ``models`` complete.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from natsched.triggers.fire import next_fire, previous_fires
    from natsched.triggers.interval import jitter_offset
    from natsched.triggers.misfire import due_slots, latest_slot_at_or_before

__all__ = ["due_slots", "jitter_offset", "latest_slot_at_or_before", "next_fire", "previous_fires"]

_HOMES = {
    "next_fire": "natsched.triggers.fire",
    "previous_fires": "natsched.triggers.fire",
    "jitter_offset": "natsched.triggers.interval",
    "due_slots": "natsched.triggers.misfire",
    "latest_slot_at_or_before": "natsched.triggers.misfire",
}


if not TYPE_CHECKING:  # mypy sees the imports above, and so still catches a misspelt name

    def __getattr__(name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later lookups skip this function
        return value
