"""Interval triggers: an exact grid from the epoch or a start, and jitter every host agrees on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from natsched.triggers import jitter_offset, next_fire
from natsched.triggers.interval import IntervalTrigger, next_interval_fire, previous_interval_fires


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_the_grid_is_anchored_at_the_epoch_and_next_is_strict() -> None:
    every_90s = IntervalTrigger(every=90)
    assert next_fire(every_90s, utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 1, 30)  # midnight is on the grid
    assert next_fire(every_90s, utc(2026, 1, 1, 0, 0, 1)) == utc(2026, 1, 1, 0, 1, 30)
    assert next_fire(every_90s, utc(2026, 1, 1, 0, 1, 29)) == utc(2026, 1, 1, 0, 1, 30)


def test_a_tenth_of_a_second_does_not_drift_or_repeat_over_a_hundred_thousand_slots() -> None:
    # 0.1 s is not exact in binary: float arithmetic would repeat or skip a slot somewhere.
    trigger = IntervalTrigger(every=0.1)
    after = utc(2026, 1, 1)
    for _ in range(100_000):
        nxt = next_fire(trigger, after)
        assert nxt is not None and nxt - after == timedelta(milliseconds=100)
        after = nxt
    assert after == utc(2026, 1, 1, 2, 46, 40)


def test_a_start_time_anchors_the_grid_and_nothing_fires_before_it() -> None:
    hourly = IntervalTrigger(every=3600, start=utc(2026, 1, 1, 0, 7))
    assert next_fire(hourly, utc(2025, 6, 1)) == utc(2026, 1, 1, 0, 7)
    assert next_fire(hourly, utc(2026, 1, 1, 5, 7)) == utc(2026, 1, 1, 6, 7)
    assert next_fire(hourly, utc(2026, 1, 1, 5, 30)) == utc(2026, 1, 1, 6, 7)
    berlin = IntervalTrigger(every=600, start=datetime(2026, 3, 29, 1, 55, tzinfo=ZoneInfo("Europe/Berlin")))
    got = next_fire(berlin, utc(2026, 3, 29, 1))  # elapsed time: the DST jump at 01:00 UTC changes nothing
    assert got == utc(2026, 3, 29, 1, 5) and got is not None and got.tzinfo is UTC


def test_previous_slots_are_newest_first_inclusive_and_never_before_the_start() -> None:
    trigger_start = utc(2026, 1, 1)
    assert previous_interval_fires(60, trigger_start, utc(2026, 1, 1, 0, 2), 5) == [
        utc(2026, 1, 1, 0, 2),
        utc(2026, 1, 1, 0, 1),
        utc(2026, 1, 1),
    ]
    assert previous_interval_fires(60, trigger_start, utc(2025, 12, 31), 5) == []
    assert previous_interval_fires(60, None, utc(2026, 1, 1, 0, 2, 30), 1) == [utc(2026, 1, 1, 0, 2)]
    assert previous_interval_fires(60, None, utc(2026, 1, 1), 0) == []


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        next_interval_fire(60, None, datetime(2026, 1, 1))


def test_jitter_is_deterministic_in_range_and_spread() -> None:
    slot = utc(2026, 1, 1)
    values = [jitter_offset("g.j", slot + timedelta(seconds=i), 5.0) for i in range(1000)]
    assert all(0 <= v < 5.0 for v in values)
    assert min(values) < 0.5 and max(values) > 4.5 and len(set(values)) == 1000
    assert jitter_offset("g.j", slot, 5.0) == jitter_offset("g.j", slot, 5.0)
    assert jitter_offset("g.j", slot, 5.0) != jitter_offset("g.other", slot, 5.0)
    assert jitter_offset("g.j", slot, 0.0) == 0.0


def test_jitter_depends_on_the_instant_not_its_zone_and_is_stable_across_releases() -> None:
    slot = utc(2026, 1, 1)
    same_instant = slot.astimezone(ZoneInfo("Asia/Tokyo"))
    assert jitter_offset("backup.nightly", same_instant, 30.0) == jitter_offset("backup.nightly", slot, 30.0)
    # Masters and agents of different versions must agree: these values are part of the protocol.
    assert jitter_offset("backup.nightly", slot, 30.0) == 19.992429087543158
    assert jitter_offset("backup.hourly", slot, 30.0) == 8.094093930685379
