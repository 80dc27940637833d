"""Cron triggers (``cron = "..."``, ``timezone``): 5 fields, or 6 with a leading seconds field.

The DST rule (also in the README). Cron fields are matched against the wall clock of the
trigger's time zone, and a schedule is one of two kinds:

- **Wall-clock schedules** (the hour field names particular hours, e.g. ``30 2 * * *`` or
  ``0 */2 * * *``) name local times of day.

  - A local time that happens twice (autumn, clocks go back) fires ONCE, at its first
    occurrence.
  - A local time that does not exist (spring, clocks go forward) fires ONCE, at the
    transition instant: ``30 2 * * *`` in Europe/Berlin on the last Sunday of March fires
    at 03:00 CEST (01:00 UTC). Several skipped slots collapse into that one firing.

- **Elapsed-time schedules** (the hour field is ``*``, or any spelling of every hour such
  as ``*/1`` or ``0-23``, e.g. ``*/5 * * * *``, ``30 * * * *``, ``*/5 * * * * *``) say how
  often, not at what time of day. They fire at every real instant whose local reading
  matches: through the repeated hour in autumn they keep firing (``0 * * * *`` fires at
  02:00 CEST and again at 02:00 CET, one hour apart), and readings that the spring gap
  skips do not exist, so nothing fires for them (``30 * * * *`` stays hourly: 01:30 CET,
  then 03:30 CEST). This is what Vixie cron does for its wildcard jobs.

Day-of-month and day-of-week, when both are restricted, match either (POSIX, croniter's
default); ``L``, ``L5`` (last Friday), ``1#2`` (second Monday) and ``15W`` are croniter's.

Why croniter only ever sees naive local wall-clock times here: with aware datetimes
croniter 7.0.0 fires a repeated wall-clock time twice in autumn (``30 2 * * *`` fires at
00:30 and 01:30 UTC on 2026-10-25 in Berlin), which breaks the rule above. With naive
datetimes it is plain calendar arithmetic, and this module applies the rule itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from natsched.errors import SpecError
from natsched.parsing import read_str
from natsched.triggers.base import TimeTrigger
from natsched.vocab import RunTrigger

_SECOND = timedelta(seconds=1)
_HOUR_FIELD = 1
# A reference start for the "does it ever fire" check: croniter looks 50 years ahead,
# and any satisfiable calendar pattern recurs within 28 years (plus the 2100 non-leap year).
_PROBE_START = datetime(2000, 1, 1)
# Segments of constant UTC offset crossed by one search; real zones change at most twice a
# year, so a handful is plenty, and the bound keeps a bad tz database from looping.
_MAX_SEGMENTS = 16


def to_croniter_expr(expr: str) -> str:
    """croniter wants seconds as the *last* field; natsched (like Quartz, Dkron) puts them first."""
    fields = expr.split()
    if len(fields) == 6:
        return " ".join(fields[1:] + fields[:1])
    return " ".join(fields)


@lru_cache(maxsize=4096)
def validate_cron(expr: str) -> None:
    """Raise ValueError with a readable reason if ``expr`` is not a usable cron expression."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron {expr!r} has {len(fields)} fields; expected 5 (min hour dom mon dow) "
            "or 6 (sec min hour dom mon dow)"
        )
    if not croniter.is_valid(to_croniter_expr(expr)):
        raise ValueError(f"cron {expr!r} is not a valid cron expression")
    # croniter accepts dates no calendar has ("0 0 30 2 *") and only fails when asked for one.
    try:
        _compile(expr).walker(_PROBE_START).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"cron {expr!r} never fires (no date matches it)") from None


@lru_cache(maxsize=512)
def validate_timezone(name: str) -> None:
    """Raise ValueError if ``name`` is not an IANA time zone known to this machine."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class _Compiled:
    prototype: croniter
    every_hour: bool  # an elapsed-time schedule, see the module docstring

    def walker(self, start: datetime) -> croniter:
        # Building a croniter parses the expression (~190 µs); a shallow copy of a parsed one
        # is ~5 µs and gives each call its own cursor, so concurrent callers never share one.
        walker: croniter = copy.copy(self.prototype)
        walker.set_current(start, force=True)
        return walker


@lru_cache(maxsize=4096)
def _compile(expr: str) -> _Compiled:
    prototype = croniter(to_croniter_expr(expr), _PROBE_START)
    # croniter normalises every spelling of "all hours" (*/1, 0-23, ...) to ["*"].
    return _Compiled(prototype, prototype.expanded[_HOUR_FIELD] == ["*"])


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _whole_second(naive: datetime) -> datetime:
    # Fire times are whole seconds, so "after 12:00:00.5" and "after 12:00:00" find the same
    # next match; croniter then never sees microseconds it would round through a float.
    return naive.replace(microsecond=0)


def _naive_next(compiled: _Compiled, start: datetime) -> datetime | None:
    """The first matching wall-clock time strictly after the naive ``start``."""
    try:
        found: datetime = compiled.walker(_whole_second(start)).get_next(datetime)
    except CroniterBadDateError:
        return None
    return found


def _naive_prev(compiled: _Compiled, at_or_before: datetime) -> datetime | None:
    """The last matching wall-clock time at or before the naive ``at_or_before``."""
    # croniter's get_prev is strict; matches are whole seconds, so one second later includes it.
    try:
        found: datetime = compiled.walker(_whole_second(at_or_before) + _SECOND).get_prev(datetime)
    except CroniterBadDateError:
        return None
    return found


def _reading(instant: datetime, zone: tzinfo) -> datetime:
    """The wall-clock reading (naive) in ``zone`` at ``instant``."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _offset(instant: datetime, zone: tzinfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


def _transition(zone: tzinfo, low: datetime, high: datetime) -> datetime:
    """The first instant in ``(low, high]`` whose UTC offset differs from ``low``'s.

    The caller knows the offsets at ``low`` and ``high`` differ. tzdata transitions fall on
    whole seconds, so a bisection on whole seconds finds it exactly.
    """
    before = _offset(low, zone)
    lo = low.astimezone(UTC).replace(microsecond=0)
    hi = high.astimezone(UTC).replace(microsecond=0) + (_SECOND if high.microsecond else timedelta(0))
    while hi - lo > _SECOND:
        middle = lo + _SECOND * ((hi - lo) // _SECOND // 2)
        if _offset(middle, zone) == before:
            lo = middle
        else:
            hi = middle
    return hi


def _gap(naive: datetime, zone: tzinfo) -> tuple[datetime, datetime] | None:
    """For a wall-clock time the clock jumps over: (the UTC instant of the jump, the first
    skipped reading). None if ``naive`` exists."""
    early = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _reading(early, zone) == naive:
        return None
    late = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    jump = _transition(zone, min(early, late), max(early, late))
    return jump, _reading(jump - _SECOND, zone) + _SECOND


def _wall_clock_instant(naive: datetime, zone: tzinfo) -> datetime:
    """Where a matching wall-clock time fires: its first occurrence, or the jump over it."""
    gap = _gap(naive, zone)
    return gap[0] if gap else naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _repeat_end(after: datetime, zone: tzinfo) -> datetime | None:
    """If ``after`` lies in the second pass through a repeated hour, the reading at which
    the repetition ends (every repeated reading had its first occurrence already)."""
    local = after.astimezone(zone)
    if not local.fold:
        return None
    first = local.replace(fold=0).astimezone(UTC)
    if first == after:
        return None  # not ambiguous: zoneinfo sets fold only where it matters, but be sure
    jump = _transition(zone, first, after)
    return _reading(jump - _SECOND, zone) + _SECOND


def _next_wall_clock(compiled: _Compiled, zone: tzinfo, after: datetime) -> datetime | None:
    repeat_end = _repeat_end(after, zone)
    start = repeat_end - _SECOND if repeat_end else _reading(after, zone)
    # After the jump past the repetition the first match is the answer; the loop only guards
    # against a tz database whose transitions break that reasoning.
    for _ in range(_MAX_SEGMENTS):
        naive = _naive_next(compiled, start)
        if naive is None:
            return None
        instant = _wall_clock_instant(naive, zone)
        if instant > after:
            return instant
        start = naive
    return None


def _previous_wall_clock(
    compiled: _Compiled, zone: tzinfo, at_or_before: datetime, count: int
) -> list[datetime]:
    repeat_end = _repeat_end(at_or_before, zone)
    # In the second pass every repeated reading already fired (at its first pass).
    cursor = repeat_end - _SECOND if repeat_end else _reading(at_or_before, zone)
    found: list[datetime] = []
    for _ in range(count + _MAX_SEGMENTS):  # bounded even if a tz database breaks the reasoning
        if len(found) >= count:
            break
        naive = _naive_prev(compiled, cursor)
        if naive is None:
            break
        gap = _gap(naive, zone)
        if gap:
            # All matches inside the gap collapse into its jump: continue before the gap
            # instead of walking through (up to 3600 of a per-second schedule).
            instant, cursor = gap[0], gap[1] - _SECOND
        else:
            instant, cursor = naive.replace(tzinfo=zone, fold=0).astimezone(UTC), naive - _SECOND
        if instant <= at_or_before and (not found or instant < found[-1]):
            found.append(instant)
    return found


def _next_elapsed(compiled: _Compiled, zone: tzinfo, after: datetime) -> datetime | None:
    # Walk segments of constant UTC offset: inside one, reading = instant + offset exactly.
    bound, inclusive = after, False
    for _ in range(_MAX_SEGMENTS):
        offset = _offset(bound, zone)
        reading = bound.replace(tzinfo=None) + offset
        naive = _naive_next(compiled, reading - _SECOND if inclusive else reading)
        if naive is None:
            return None
        candidate = (naive - offset).replace(tzinfo=UTC)
        if _offset(candidate, zone) == offset:
            return candidate
        # The offset changed before the candidate: resume at the change, in the new offset.
        bound, inclusive = _transition(zone, bound, candidate), True
    return None


def _previous_elapsed(
    compiled: _Compiled, zone: tzinfo, at_or_before: datetime, count: int
) -> list[datetime]:
    found: list[datetime] = []
    bound = at_or_before
    for _ in range(count * _MAX_SEGMENTS):
        if len(found) >= count:
            break
        offset = _offset(bound, zone)
        naive = _naive_prev(compiled, bound.replace(tzinfo=None) + offset)
        if naive is None:
            break
        candidate = (naive - offset).replace(tzinfo=UTC)
        if _offset(candidate, zone) == offset:
            found.append(candidate)
            bound = candidate - _SECOND
        else:
            # The segment began after the candidate: continue just before its start.
            bound = _transition(zone, candidate, bound) - _SECOND
    return found


def _utc(instant: datetime) -> datetime:
    # Aware datetimes sharing a tzinfo subtract and compare as wall-clock times, which is
    # wrong across a DST change; everything below works on UTC instants only.
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{instant.isoformat()} has no time zone; pass an aware datetime")
    return instant.astimezone(UTC)


@lru_cache(maxsize=4096)
def next_cron_fire(expr: str, timezone: str, after: datetime) -> datetime | None:
    """The first fire instant of ``expr`` in ``timezone`` strictly after ``after`` (UTC).

    None only if the expression never fires (``validate_cron`` rejects those). Remembered:
    the jobs due at one instant mostly share their expression and ask with the same
    ``after`` (their slot), and each answer costs 40-80 us in front of their starts.
    """
    compiled, zone = _compile(expr), _zone(timezone)
    if compiled.every_hour:
        return _next_elapsed(compiled, zone, _utc(after))
    return _next_wall_clock(compiled, zone, _utc(after))


def previous_cron_fires(expr: str, timezone: str, at_or_before: datetime, count: int) -> list[datetime]:
    """The latest ``count`` fire instants at or before ``at_or_before``, newest first (UTC).

    Exactly the instants ``next_cron_fire`` steps through, so a cursor can move either way.
    """
    if count <= 0:
        return []
    compiled, zone = _compile(expr), _zone(timezone)
    if compiled.every_hour:
        return _previous_elapsed(compiled, zone, _utc(at_or_before), count)
    return _previous_wall_clock(compiled, zone, _utc(at_or_before), count)


@dataclass(frozen=True, kw_only=True, slots=True)
class CronTrigger(TimeTrigger):
    """Fire on a cron grid; 6 fields means a leading seconds field."""

    kind = RunTrigger.CRON
    key = "cron"
    fields = frozenset({"cron", "timezone"})
    example = {"cron": "0 30 2 * * 1-5", "timezone": "Europe/Berlin"}

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        try:
            validate_cron(self.cron)
        except ValueError as exc:
            raise SpecError(str(exc), field="triggers.cron") from None
        try:
            validate_timezone(self.timezone)
        except ValueError as exc:
            raise SpecError(str(exc), field="triggers.timezone") from None

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        return cls(
            cron=read_str(data["cron"], "triggers.cron"),
            timezone=read_str(data.get("timezone", "UTC"), "triggers.timezone"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.cron, "timezone": self.timezone}

    def describe(self) -> str:
        return f"cron {self.cron} {self.timezone}"

    def next_fire(self, after: datetime) -> datetime | None:
        return next_cron_fire(self.cron, self.timezone, after)

    def previous_fires(self, at_or_before: datetime, count: int) -> list[datetime]:
        return previous_cron_fires(self.cron, self.timezone, at_or_before, count)
