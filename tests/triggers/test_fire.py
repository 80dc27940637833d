"""Time triggers of a job, once triggers, and the package's public names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import natsched.triggers
from natsched.models import JobSpec, Misfire, Targets
from natsched.triggers import fire, misfire, next_fire, previous_fires
from natsched.triggers.base import Trigger
from natsched.triggers.cron import CronTrigger
from natsched.triggers.event import EventTrigger
from natsched.triggers.file import FileTrigger
from natsched.triggers.interval import IntervalTrigger
from natsched.triggers.once import OnceTrigger
from natsched.triggers.subject import SubjectTrigger

AT = datetime(2026, 5, 1, 9, tzinfo=UTC)
NOT_TIMED: list[Trigger] = [
    FileTrigger(watch="/srv/in"),
    EventTrigger(after=("etl.extract",)),
    SubjectTrigger(subject="orders.created"),
]


def test_once_fires_at_its_instant_then_never_again() -> None:
    once = OnceTrigger(at=AT)
    assert next_fire(once, AT - timedelta(days=30)) == AT
    assert next_fire(once, AT - timedelta(microseconds=1)) == AT
    assert next_fire(once, AT) is None
    assert next_fire(once, AT + timedelta(days=1)) is None
    assert previous_fires(once, AT + timedelta(days=1), 3) == [AT]
    assert previous_fires(once, AT - timedelta(seconds=1), 3) == []


def test_once_in_another_zone_comes_back_in_utc() -> None:
    once = OnceTrigger(at=datetime(2026, 5, 1, 11, tzinfo=timezone(timedelta(hours=2))))
    got = next_fire(once, AT - timedelta(hours=1))
    assert got == AT and got is not None and got.tzinfo is UTC


def test_triggers_that_are_not_time_based_never_have_a_fire_time() -> None:
    for trigger in NOT_TIMED:
        assert next_fire(trigger, AT) is None
        assert previous_fires(trigger, AT, 5) == []
        assert misfire.due_slots(trigger, None, AT, Misfire.RUN_ALL, 5) == []


def test_kind_names_and_time_triggers_of_a_job() -> None:
    timed: list[Trigger] = [CronTrigger(cron="0 * * * *"), IntervalTrigger(every=5), OnceTrigger(at=AT)]
    every = Targets(agents=("*",))
    spec = JobSpec(name="j", group="g", command=("true",), targets=every, triggers=(*NOT_TIMED, *timed))
    assert fire.time_triggers(spec) == timed
    kinds = [fire.trigger_kind(t) for t in spec.triggers]
    assert kinds == ["file", "event", "subject", "cron", "interval", "once"]
    assert fire.utc(AT.timestamp()) == AT


def test_the_package_exports_the_pure_functions() -> None:
    assert natsched.triggers.next_fire is fire.next_fire
    assert natsched.triggers.due_slots is misfire.due_slots
    assert set(natsched.triggers.__all__) == {
        "due_slots",
        "jitter_offset",
        "latest_slot_at_or_before",
        "next_fire",
        "previous_fires",
    }
    for name in natsched.triggers.__all__:
        assert callable(getattr(natsched.triggers, name))
    with pytest.raises(AttributeError):
        getattr(natsched.triggers, "nothing_here")  # noqa: B009
