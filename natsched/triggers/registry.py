"""The trigger kinds natsched knows: one line per kind.

To add a kind: write ``natsched/triggers/<kind>.py`` (a frozen dataclass subclassing
``Trigger``, or ``TimeTrigger`` if it fires at computed instants, see ``base.py``), add it
to ``KINDS`` below, then make the service that fires it act on it (its ``kind`` is the
``trigger`` its runs and events carry). ``tests/triggers/test_registry.py`` checks each kind.
"""

from __future__ import annotations

from typing import Any

from natsched.errors import SpecError
from natsched.parsing import read_table
from natsched.triggers.base import Trigger
from natsched.triggers.cron import CronTrigger
from natsched.triggers.event import EventTrigger
from natsched.triggers.file import FileTrigger
from natsched.triggers.interval import IntervalTrigger
from natsched.triggers.once import OnceTrigger
from natsched.triggers.subject import SubjectTrigger

KINDS: tuple[type[Trigger], ...] = (
    CronTrigger,
    IntervalTrigger,
    OnceTrigger,
    FileTrigger,
    EventTrigger,
    SubjectTrigger,
)

_BY_KEY: dict[str, type[Trigger]] = {kind.key: kind for kind in KINDS}
_FIELDS = frozenset().union(*(kind.fields for kind in KINDS))


def check_registered(trigger: Trigger) -> None:
    """Raise SpecError unless ``trigger`` is of a registered kind (a job can only hold those)."""
    if type(trigger) not in KINDS:
        raise SpecError(f"{type(trigger).__name__} is not a registered trigger kind", field="triggers")


def parse_trigger(value: object, group: str) -> Trigger:
    """One trigger from its job-file table: exactly one kind's key decides the kind."""
    data = read_table(value, "triggers", _FIELDS)
    keys = [key for key in _BY_KEY if key in data]
    if len(keys) != 1:
        raise SpecError(f"each trigger needs exactly one of {', '.join(_BY_KEY)}", field="triggers")
    kind = _BY_KEY[keys[0]]
    foreign = sorted(set(data) - kind.fields)
    if foreign:
        raise SpecError(
            f"{', '.join(foreign)} not for a {kind.kind} trigger; it takes {', '.join(sorted(kind.fields))}",
            field=f"triggers.{foreign[0]}",
        )
    return kind.parse(data, group)


def trigger_to_dict(trigger: Trigger) -> dict[str, Any]:
    """The trigger's canonical job-file table; SpecError for a kind not in the registry."""
    check_registered(trigger)
    return trigger.to_dict()
