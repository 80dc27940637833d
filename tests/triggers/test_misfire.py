"""Misfire policies: what fires after an outage, with the backlog bounded by the cap."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from natsched.models import Misfire
from natsched.triggers import due_slots, latest_slot_at_or_before
from natsched.triggers.cron import CronTrigger
from natsched.triggers.interval import IntervalTrigger
from natsched.triggers.once import OnceTrigger


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


EVERY_MINUTE = CronTrigger(cron="* * * * *")
LAST = utc(2026, 1, 1, 11, 50)  # then down: 11:51 ... 12:00 were not fired
LATE = utc(2026, 1, 1, 12, 0, 30)  # 30 s after the 12:00 slot: that slot is late, not on time
ON_TIME = utc(2026, 1, 1, 12) + timedelta(milliseconds=300)


def minutes(*pairs: tuple[int, int]) -> list[datetime]:
    return [utc(2026, 1, 1, h, m) for h, m in pairs]


@pytest.mark.parametrize(
    ("policy", "cap", "expected"),
    [
        (Misfire.SKIP, 3, []),
        (Misfire.RUN_ONCE, 3, minutes((12, 0))),
        (Misfire.RUN_ALL, 3, minutes((11, 58), (11, 59), (12, 0))),  # the latest `cap`, oldest first
        (Misfire.RUN_ALL, 100, [LAST + timedelta(minutes=i) for i in range(1, 11)]),
    ],
)
def test_after_an_outage(policy: Misfire, cap: int, expected: list[datetime]) -> None:
    assert due_slots(EVERY_MINUTE, LAST, LATE, policy, cap) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Misfire.SKIP, minutes((12, 0))),  # the missed ones are dropped, the on-time one fires
        (Misfire.RUN_ONCE, minutes((12, 0))),
        (Misfire.RUN_ALL, minutes((11, 58), (11, 59), (12, 0))),
    ],
)
def test_after_an_outage_ending_just_as_a_slot_falls_due(policy: Misfire, expected: list[datetime]) -> None:
    assert due_slots(EVERY_MINUTE, LAST, ON_TIME, policy, cap=3) == expected


def test_an_on_time_slot_fires_under_every_policy() -> None:
    for policy in Misfire:
        assert due_slots(EVERY_MINUTE, utc(2026, 1, 1, 11, 59), ON_TIME, policy, cap=5) == minutes((12, 0))
        assert due_slots(EVERY_MINUTE, utc(2026, 1, 1, 12), ON_TIME, policy, cap=5) == []  # already fired
        assert due_slots(EVERY_MINUTE, utc(2026, 1, 1, 12, 5), ON_TIME, policy, cap=5) == []  # cursor ahead


def test_grace_is_inclusive_and_configurable() -> None:
    last = utc(2026, 1, 1, 11, 59)
    assert due_slots(EVERY_MINUTE, last, utc(2026, 1, 1, 12, 0, 1), Misfire.SKIP, 1) == minutes((12, 0))
    just_late = utc(2026, 1, 1, 12, 0, 1) + timedelta(microseconds=1)
    assert due_slots(EVERY_MINUTE, last, just_late, Misfire.SKIP, 1) == []
    assert due_slots(EVERY_MINUTE, last, LATE, Misfire.SKIP, 1, grace=30) == minutes((12, 0))


def test_a_job_that_never_fired_has_no_backlog() -> None:
    for policy in Misfire:
        assert due_slots(EVERY_MINUTE, None, ON_TIME, policy, cap=5) == minutes((12, 0))
        assert due_slots(EVERY_MINUTE, None, LATE, policy, cap=5) == []


def test_cap_must_allow_one_slot() -> None:
    with pytest.raises(ValueError, match="cap"):
        due_slots(EVERY_MINUTE, LAST, LATE, Misfire.RUN_ALL, 0)


def test_a_per_second_job_down_for_a_year_costs_only_cap_slots() -> None:
    every_second = CronTrigger(cron="* * * * * *")
    now = utc(2026, 6, 1, 12)
    year_ago = now - timedelta(days=365)  # 31.5 million missed slots
    started = time.perf_counter()
    got = due_slots(every_second, year_ago, now, Misfire.RUN_ALL, cap=5)
    assert got == [now - timedelta(seconds=s) for s in (4, 3, 2, 1, 0)]
    assert due_slots(every_second, year_ago, now, Misfire.RUN_ONCE, cap=5) == [now]
    interval = IntervalTrigger(every=0.1)
    assert due_slots(interval, year_ago, now, Misfire.RUN_ALL, cap=3) == [
        now - timedelta(milliseconds=ms) for ms in (200, 100, 0)
    ]
    # Not a benchmark: a walk over the gap would take minutes; bounded work takes milliseconds.
    assert time.perf_counter() - started < 10


def test_a_missed_day_across_the_spring_gap_catches_up_the_transition_slot() -> None:
    nightly = CronTrigger(cron="30 2 * * *", timezone="Europe/Berlin")
    got = due_slots(nightly, utc(2026, 3, 27, 1, 30), utc(2026, 3, 30, 12), Misfire.RUN_ALL, cap=10)
    assert got == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]


def test_once_triggers_under_each_policy() -> None:
    once = OnceTrigger(at=utc(2026, 1, 1, 11))
    now = utc(2026, 1, 1, 12)
    assert due_slots(once, utc(2025, 1, 1), now, Misfire.SKIP, 5) == []
    assert due_slots(once, utc(2025, 1, 1), now, Misfire.RUN_ONCE, 5) == [utc(2026, 1, 1, 11)]
    assert due_slots(once, utc(2026, 1, 1, 11), now, Misfire.RUN_ALL, 5) == []  # it fired
    assert due_slots(once, None, utc(2026, 1, 1, 11, 0, 0), Misfire.SKIP, 5) == [utc(2026, 1, 1, 11)]


def test_latest_slot_moves_a_cursor_past_skipped_slots() -> None:
    assert latest_slot_at_or_before(EVERY_MINUTE, LATE) == utc(2026, 1, 1, 12)
    assert latest_slot_at_or_before(EVERY_MINUTE, utc(2026, 1, 1, 12)) == utc(2026, 1, 1, 12)
    assert latest_slot_at_or_before(OnceTrigger(at=utc(2027, 1, 1)), LATE) is None
    assert latest_slot_at_or_before(IntervalTrigger(every=60, start=utc(2027, 1, 1)), LATE) is None
