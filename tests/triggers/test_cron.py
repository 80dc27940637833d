"""Cron fire times: the DST rule in three zones, leap days, month ends, seconds fields.

Expected instants are written in UTC with the local reading beside them, so a failure
says which wall-clock time fired.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from natsched.errors import SpecError
from natsched.triggers import next_fire
from natsched.triggers.cron import (
    CronTrigger,
    next_cron_fire,
    previous_cron_fires,
    to_croniter_expr,
    validate_cron,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(cron: str, zone: str, after: datetime, n: int) -> list[datetime]:
    """The next ``n`` fire instants, each found from the one before (as a scheduler does)."""
    trigger = CronTrigger(cron=cron, timezone=zone)
    out: list[datetime] = []
    for _ in range(n):
        nxt = next_fire(trigger, after)
        assert nxt is not None
        out.append(nxt)
        after = nxt
    return out


def local(instants: list[datetime], zone: str) -> list[str]:
    return [t.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M:%S %Z") for t in instants]


# --- Wall-clock schedules: skipped times fire at the jump, repeated times fire once -----


@pytest.mark.parametrize(
    ("zone", "after", "expected"),
    [
        # Berlin springs forward 2026-03-29 at 01:00 UTC: 02:00 CET -> 03:00 CEST.
        (
            "Europe/Berlin",
            utc(2026, 3, 28),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
        ),
        # New York springs forward 2026-03-08 at 07:00 UTC: 02:00 EST -> 03:00 EDT.
        (
            "America/New_York",
            utc(2026, 3, 7),
            [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
        ),
        # Sydney (southern hemisphere) springs forward 2026-10-04 02:00 AEST -> 03:00 AEDT.
        (
            "Australia/Sydney",
            utc(2026, 10, 2, 12),
            [utc(2026, 10, 2, 16, 30), utc(2026, 10, 3, 16), utc(2026, 10, 4, 15, 30)],
        ),
    ],
)
def test_a_skipped_wall_clock_time_fires_once_at_the_transition(
    zone: str, after: datetime, expected: list[datetime]
) -> None:
    got = fires("30 2 * * *", zone, after, 3)
    assert got == expected
    assert [s[6:11] for s in local(got, zone)] == ["02:30", "03:00", "02:30"]


@pytest.mark.parametrize(
    ("zone", "cron", "after", "expected"),
    [
        # Berlin falls back 2026-10-25 at 01:00 UTC: 03:00 CEST -> 02:00 CET; 02:30 happens twice.
        (
            "Europe/Berlin",
            "30 2 * * *",
            utc(2026, 10, 24),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        # New York falls back 2026-11-01 at 06:00 UTC: 02:00 EDT -> 01:00 EST; 01:30 twice.
        (
            "America/New_York",
            "30 1 * * *",
            utc(2026, 10, 31),
            [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
        # Sydney falls back 2026-04-05 03:00 AEDT -> 02:00 AEST; 02:30 twice.
        (
            "Australia/Sydney",
            "30 2 * * *",
            utc(2026, 4, 3, 12),
            [utc(2026, 4, 3, 15, 30), utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 16, 30)],
        ),
    ],
)
def test_a_repeated_wall_clock_time_fires_once_at_its_first_occurrence(
    zone: str, cron: str, after: datetime, expected: list[datetime]
) -> None:
    assert fires(cron, zone, after, 3) == expected


def test_slots_inside_the_gap_collapse_into_one_firing() -> None:
    got = fires("*/20 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 0, 50), 5)
    assert local(got, "Europe/Berlin") == [
        "03-28 02:00:00 CET",
        "03-28 02:20:00 CET",
        "03-28 02:40:00 CET",
        "03-29 03:00:00 CEST",  # 02:00, 02:20 and 02:40 do not exist that day: one firing
        "03-30 02:00:00 CEST",
    ]


def test_a_wall_clock_schedule_does_not_fire_in_the_second_pass_of_the_repeated_hour() -> None:
    got = fires("*/20 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 59), 4)
    assert got == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 0, 20),
        utc(2026, 10, 25, 0, 40),
        utc(2026, 10, 26, 1),
    ]
    # Asked from inside the second pass (02:10 CET), the next firing is the next day.
    assert next_cron_fire("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)
    # A per-second schedule in that hour jumps past the repetition instead of walking it.
    assert next_cron_fire("* * 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 0, 1)) == utc(2026, 10, 26, 1)


# --- Elapsed-time schedules (every hour): they follow real time through DST -------------


def test_hourly_schedules_fire_every_real_hour_through_the_autumn_repeat() -> None:
    got = fires("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 30), 3)
    assert local(got, "Europe/Berlin") == ["10-25 02:00:00 CEST", "10-25 02:00:00 CET", "10-25 03:00:00 CET"]
    assert got == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]
    got = fires("30 * * * *", "America/New_York", utc(2026, 11, 1, 4, 45), 3)
    assert local(got, "America/New_York") == [
        "11-01 01:30:00 EDT",
        "11-01 01:30:00 EST",
        "11-01 02:30:00 EST",
    ]


def test_hourly_schedules_skip_readings_that_do_not_exist_in_spring() -> None:
    got = fires("30 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 45), 3)
    assert got == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)]  # still hourly
    assert local(got, "Europe/Berlin")[1] == "03-29 03:30:00 CEST"


def test_every_spelling_of_every_hour_is_an_elapsed_time_schedule() -> None:
    for cron in ("0 * * * *", "0 */1 * * *", "0 0-23 * * *"):
        assert fires(cron, "Europe/Berlin", utc(2026, 10, 25, 0, 30), 2) == [
            utc(2026, 10, 25, 1),
            utc(2026, 10, 25, 2),
        ]
    # Every other hour names times of day: the repeated 02:00 fires once.
    got = fires("0 */2 * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 30), 2)
    assert got == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 3)]


def test_sub_minute_schedules_run_on_through_both_transitions() -> None:
    spring = fires("*/5 * * * * *", "Europe/Berlin", utc(2026, 3, 29, 0, 59, 50), 4)
    assert spring == [
        utc(2026, 3, 29, 0, 59, 55),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 1, 0, 5),
        utc(2026, 3, 29, 1, 0, 10),
    ]
    autumn = fires("*/1 * * * * *", "America/New_York", utc(2026, 11, 1, 5, 59, 58), 4)
    assert autumn == [utc(2026, 11, 1, 5, 59, 59) + timedelta(seconds=s) for s in range(4)]


# --- Calendar ----------------------------------------------------------------------------


def test_feb_29_waits_for_the_next_leap_year() -> None:
    assert fires("0 0 29 2 *", "UTC", utc(2026, 1, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]
    # 2100 is not a leap year.
    assert next_fire(CronTrigger(cron="0 0 29 2 *"), utc(2097, 1, 1)) == utc(2104, 2, 29)


def test_the_31st_skips_months_without_one_and_l_means_the_last_day() -> None:
    got = fires("0 0 31 * *", "UTC", utc(2026, 1, 31), 6)
    assert got == [utc(2026, m, 31) for m in (3, 5, 7, 8, 10, 12)]
    got = fires("0 12 L * *", "Europe/Berlin", utc(2026, 1, 1), 4)
    assert got == [utc(2026, 1, 31, 11), utc(2026, 2, 28, 11), utc(2026, 3, 31, 10), utc(2026, 4, 30, 10)]


def test_a_day_that_never_comes_is_rejected() -> None:
    for cron in ("0 0 30 2 *", "0 0 31 4,6 *"):
        with pytest.raises(ValueError, match="never fires"):
            validate_cron(cron)
        with pytest.raises(SpecError):
            CronTrigger(cron=cron)
        assert next_cron_fire(cron, "UTC", utc(2026, 1, 1)) is None  # if it got past validation
    validate_cron("0 0 31 2,3 *")  # March has one


# --- Fields and inputs -------------------------------------------------------------------


def test_six_fields_put_seconds_first_five_fields_have_none() -> None:
    assert to_croniter_expr("15 30 9 * * *") == "30 9 * * * 15"
    assert fires("*/5 * * * * *", "UTC", utc(2026, 1, 1, 0, 0, 3), 3) == [
        utc(2026, 1, 1, 0, 0, s) for s in (5, 10, 15)
    ]
    assert next_cron_fire("30 * * * * *", "UTC", utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 1, 30)
    assert next_cron_fire("30 * * * *", "UTC", utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 30)
    assert next_cron_fire("15 30 9 * * *", "UTC", utc(2026, 1, 1, 9, 30, 15)) == utc(2026, 1, 2, 9, 30, 15)


def test_after_is_strict_any_zone_is_accepted_and_the_result_is_utc() -> None:
    assert next_cron_fire("* * * * * *", "UTC", utc(2026, 1, 1, 12)) == utc(2026, 1, 1, 12, 0, 1)
    half = utc(2026, 1, 1, 12) + timedelta(microseconds=500_000)
    assert next_cron_fire("* * * * * *", "UTC", half) == utc(2026, 1, 1, 12, 0, 1)
    berlin_1300 = datetime(2026, 1, 1, 13, tzinfo=ZoneInfo("Europe/Berlin"))  # 12:00 UTC
    got = next_cron_fire("0 * * * *", "UTC", berlin_1300)
    assert got == utc(2026, 1, 1, 13) and got is not None and got.tzinfo is UTC
    with pytest.raises(ValueError, match="time zone"):
        next_cron_fire("0 * * * *", "UTC", datetime(2026, 1, 1))


def test_previous_fires_are_inclusive_newest_first_and_follow_the_rule() -> None:
    assert previous_cron_fires("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1), 2) == [
        utc(2026, 3, 29, 1),
        utc(2026, 3, 28, 1, 30),
    ]
    # Asked from the second pass of the repeated hour: 02:30 fired in the first pass only.
    assert previous_cron_fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 45), 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 24, 0, 30),
    ]
    assert previous_cron_fires("0 * * * *", "Europe/Berlin", utc(2026, 10, 25, 2), 3) == [
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 0),
    ]
    assert previous_cron_fires("0 * * * *", "UTC", utc(2026, 1, 1), 0) == []


# --- Against a brute-force oracle ------------------------------------------------------


def _oracle(cron: str, zone_name: str, low: datetime, high: datetime) -> list[datetime]:
    """The DST rule applied literally: step through every real second (or minute) and fire
    where the local reading matches, as the module docstring words it."""
    zone = ZoneInfo(zone_name)
    walker = croniter(to_croniter_expr(cron), datetime(2000, 1, 1))
    seconds = len(cron.split()) == 6
    step = timedelta(seconds=1 if seconds else 60)

    def matches(naive: datetime) -> bool:
        found: datetime = walker.get_next(datetime, start_time=naive - timedelta(seconds=1))
        return found == naive

    every_hour = walker.expanded[1] == ["*"]
    out: list[datetime] = []
    previous: datetime | None = None
    t = low
    while t <= high:
        reading = t.astimezone(zone)
        naive = reading.replace(tzinfo=None, fold=0)
        fire = matches(naive) and (every_hour or reading.fold == 0)
        if not every_hour and previous is not None and naive - previous > step:  # the clock jumped
            skipped = previous + step
            while skipped < naive and not fire:
                fire = matches(skipped)
                skipped += step
        if fire:
            out.append(t)
        previous, t = naive, t + step
    return out


@pytest.mark.parametrize(
    ("cron", "zone", "transition"),
    [
        ("*/20 1-3 * * *", "America/New_York", utc(2026, 3, 8, 7)),
        ("*/20 1-3 * * *", "America/New_York", utc(2026, 11, 1, 6)),
        ("*/7 * * * *", "Europe/Berlin", utc(2026, 10, 25, 1)),
        ("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 15, 30)),  # a 30-minute DST shift
        ("*/10 * * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 15)),
        ("30 0 * * *", "America/Santiago", utc(2026, 9, 6, 4)),  # the gap is at midnight
        ("*/13 * 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1)),
        ("*/13 * 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1)),
    ],
)
def test_forward_and_backward_walks_match_a_brute_force_oracle(
    cron: str, zone: str, transition: datetime
) -> None:
    window = timedelta(minutes=75) if len(cron.split()) == 6 else timedelta(hours=26)
    low, high = transition - window, transition + window
    expected = _oracle(cron, zone, low, high)
    forward: list[datetime] = []
    after = low - timedelta(seconds=1)
    while (nxt := next_cron_fire(cron, zone, after)) is not None and nxt <= high:
        forward.append(nxt)
        after = nxt
    backward = previous_cron_fires(cron, zone, high, len(expected) + 1)
    assert expected
    assert forward == expected
    assert backward[-1] < low and backward[:-1][::-1] == expected
