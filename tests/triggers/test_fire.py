"""Pure trigger functions: DST, leap days, month ends, sub-minute, intervals, misfire. No sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from natsched.models import CronTrigger, IntervalTrigger, Misfire, OnceTrigger
from natsched.triggers.fire import jitter_offset, next_fire, previous_fires
from natsched.triggers.misfire import due_slots


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type, misc]


def fires(trigger: CronTrigger | IntervalTrigger, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        nxt = next_fire(trigger, after)
        assert nxt is not None
        out.append(nxt)
        after = nxt
    return out


@pytest.mark.parametrize(
    ("zone", "gap_day", "expected_utc"),
    [
        # Europe/Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 fires at 03:00 CEST.
        ("Europe/Berlin", utc(2026, 3, 28, 12), utc(2026, 3, 29, 1, 0)),
        # America/New_York springs forward 2026-03-08 02:00 EST -> 03:00 EDT.
        ("America/New_York", utc(2026, 3, 7, 12), utc(2026, 3, 8, 7, 0)),
        # Australia/Sydney springs forward 2026-10-04 02:00 AEST -> 03:00 AEDT (southern hemisphere).
        ("Australia/Sydney", utc(2026, 10, 3, 0), utc(2026, 10, 3, 16, 0)),
    ],
)
def test_skipped_local_time_fires_once_at_the_transition(
    zone: str, gap_day: datetime, expected_utc: datetime
) -> None:
    trigger = CronTrigger(cron="30 2 * * *", timezone=zone)
    first, second = fires(trigger, gap_day, 2)
    assert first == expected_utc
    assert first.astimezone(ZoneInfo(zone)).hour == 3 and first.astimezone(ZoneInfo(zone)).minute == 0
    # The next day is normal again: 02:30 local.
    assert second.astimezone(ZoneInfo(zone)).strftime("%H:%M") == "02:30"


def test_slots_inside_the_gap_collapse_into_one_firing() -> None:
    trigger = CronTrigger(cron="*/15 * * * *", timezone="Europe/Berlin")
    got = fires(trigger, utc(2026, 3, 29, 0, 40), 4)  # 01:40 CET
    local = [t.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") for t in got]
    assert local == ["01:45", "03:00", "03:15", "03:30"]
    assert len(set(got)) == 4


@pytest.mark.parametrize(
    ("zone", "before", "first_utc"),
    [
        # Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice.
        ("Europe/Berlin", utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30)),
        # New York falls back 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 happens twice.
        ("America/New_York", utc(2026, 10, 31, 12), utc(2026, 11, 1, 5, 30)),
    ],
)
def test_repeated_local_time_fires_once_at_its_first_occurrence(
    zone: str, before: datetime, first_utc: datetime
) -> None:
    hh = "2" if zone == "Europe/Berlin" else "1"
    trigger = CronTrigger(cron=f"30 {hh} * * *", timezone=zone)
    first, second = fires(trigger, before, 2)
    assert first == first_utc
    assert second - first > timedelta(hours=24)  # the second occurrence one hour later did not fire


def test_feb_29_and_month_ends() -> None:
    leap = CronTrigger(cron="0 0 29 2 *")
    assert next_fire(leap, utc(2026, 1, 1)) == utc(2028, 2, 29)
    month_end = CronTrigger(cron="0 12 31 * *")
    got = fires(month_end, utc(2026, 1, 31, 13), 4)
    assert [t.month for t in got] == [3, 5, 7, 8]  # February, April, June have no 31st


def test_sub_minute_schedules_with_a_leading_seconds_field() -> None:
    every_5s = CronTrigger(cron="*/5 * * * * *")
    assert fires(every_5s, utc(2026, 1, 1, 0, 0, 3), 3) == [utc(2026, 1, 1, 0, 0, s) for s in (5, 10, 15)]
    at_second_30 = CronTrigger(cron="30 * * * * *")
    assert next_fire(at_second_30, utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 1, 30)
    five_fields = CronTrigger(cron="*/10 * * * *")
    assert next_fire(five_fields, utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 10)


def test_interval_grid_has_no_drift_and_honours_start() -> None:
    every = IntervalTrigger(every=0.25)
    got = fires(every, utc(2026, 1, 1), 4000)  # 1000 s of quarter seconds
    assert got[-1] == utc(2026, 1, 1, 0, 16, 40)
    anchored = IntervalTrigger(every=3600, start=utc(2026, 1, 1, 0, 7))
    assert next_fire(anchored, utc(2025, 6, 1)) == utc(2026, 1, 1, 0, 7)
    assert next_fire(anchored, utc(2026, 1, 1, 5, 7)) == utc(2026, 1, 1, 6, 7)


def test_jitter_is_deterministic_and_in_range() -> None:
    slot = utc(2026, 1, 1)
    values = {jitter_offset("g.j", slot + timedelta(seconds=i), 5.0) for i in range(200)}
    assert all(0 <= v < 5.0 for v in values) and len(values) > 150
    assert jitter_offset("g.j", slot, 5.0) == jitter_offset("g.j", slot, 5.0)
    assert jitter_offset("g.j", slot, 0) == 0


def test_once() -> None:
    once = OnceTrigger(at=utc(2026, 5, 1))
    assert next_fire(once, utc(2026, 4, 1)) == utc(2026, 5, 1)
    assert next_fire(once, utc(2026, 5, 1)) is None
    assert previous_fires(once, utc(2026, 6, 1), 3) == [utc(2026, 5, 1)]


EVERY_MINUTE = CronTrigger(cron="0 * * * * *")
NOW = utc(2026, 1, 1, 12, 0, 30)  # 30 s after the 12:00 slot: that slot is late, not on time


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Misfire.SKIP, []),
        (Misfire.RUN_ONCE, [utc(2026, 1, 1, 12, 0)]),
        (Misfire.RUN_ALL, [utc(2026, 1, 1, 11, 58), utc(2026, 1, 1, 11, 59), utc(2026, 1, 1, 12, 0)]),
    ],
)
def test_misfire_policies(policy: Misfire, expected: list[datetime]) -> None:
    last = utc(2026, 1, 1, 11, 50)  # ten slots missed
    assert due_slots(EVERY_MINUTE, last, NOW, policy, cap=3) == expected


def test_on_time_slot_fires_under_every_policy_and_never_fired_means_no_backlog() -> None:
    now = utc(2026, 1, 1, 12, 0, 0, 300000)  # 0.3 s after the slot
    for policy in Misfire:
        assert due_slots(EVERY_MINUTE, utc(2026, 1, 1, 11, 59), now, policy, cap=5) == [utc(2026, 1, 1, 12)]
        assert due_slots(EVERY_MINUTE, None, NOW, policy, cap=5) == []
        assert due_slots(EVERY_MINUTE, utc(2026, 1, 1, 12), NOW, policy, cap=5) == []


def test_large_gap_work_is_bounded_by_cap() -> None:
    every_second = CronTrigger(cron="* * * * * *")
    week_ago = NOW - timedelta(days=7)
    # 600k slots were missed; the walk goes back from now and stops after `cap` of them.
    got = due_slots(every_second, week_ago, NOW, Misfire.RUN_ALL, cap=5)
    assert got == [NOW - timedelta(seconds=s) for s in (4, 3, 2, 1, 0)]
