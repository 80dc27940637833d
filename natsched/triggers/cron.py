"""Cron expressions: 5 fields, or 6 with a leading seconds field, in a time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter


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


@lru_cache(maxsize=512)
def validate_timezone(name: str) -> None:
    """Raise ValueError if ``name`` is not an IANA time zone known to this machine."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


# --- Fire times ------------------------------------------------------------------------
#
# The DST rule (documented in the README): cron fields are matched against the wall
# clock of the trigger's time zone.
# - A wall-clock time that happens twice (autumn, clocks go back) fires ONCE, at its
#   first occurrence. This holds for every schedule: an every-5-minutes cron does not
#   fire again during the repeated hour (use an interval trigger to follow elapsed time).
# - A wall-clock time that does not exist (spring, clocks go forward) fires ONCE, at the
#   transition instant: 02:30 Europe/Berlin on the last Sunday of March fires at 03:00
#   CEST (01:00 UTC). Several skipped slots collapse into that one firing.

_MAX_STEPS = 100_000  # bounds the walk through a repeated hour of a per-second cron


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local_naive(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _exists(naive: datetime, zone: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=zone)
    return _local_naive(aware.astimezone(UTC), zone) == naive


def _transition_after_gap(naive: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant at which the clock jumped over the non-existent local time ``naive``."""
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)  # interpreted with the new offset: before
    high = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)  # with the old offset: after
    if low > high:
        low, high = high, low
    while (high - low).total_seconds() > 1:
        middle = low + (high - low) / 2
        if _local_naive(middle, zone) < naive:
            low = middle
        else:
            high = middle
    # The transition lands on a whole second (in practice a whole hour or half hour).
    candidate = high.replace(microsecond=0)
    return candidate if _local_naive(candidate, zone) >= naive else candidate + timedelta(seconds=1)


def _instant(naive: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a matching wall-clock time fires at, per the DST rule above."""
    if not _exists(naive, zone):
        return _transition_after_gap(naive, zone)
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def next_cron_fire(expr: str, timezone: str, after: datetime) -> datetime:
    """The first fire instant of ``expr`` in ``timezone`` strictly after ``after`` (UTC)."""
    zone = _zone(timezone)
    walker = croniter(to_croniter_expr(expr), _local_naive(after, zone))
    for _ in range(_MAX_STEPS):
        naive = walker.get_next(datetime)
        instant = _instant(naive, zone)
        if instant > after:
            return instant
    raise ValueError(f"cron {expr!r} found no fire time after {after.isoformat()}")


def previous_cron_fires(expr: str, timezone: str, at_or_before: datetime, count: int) -> list[datetime]:
    """The latest ``count`` fire instants at or before ``at_or_before``, newest first (UTC)."""
    zone = _zone(timezone)
    # croniter's get_prev is strict: start one second later to include the instant itself.
    walker = croniter(to_croniter_expr(expr), _local_naive(at_or_before + timedelta(seconds=1), zone))
    found: list[datetime] = []
    for _ in range(_MAX_STEPS):
        if len(found) >= count:
            break
        instant = _instant(walker.get_prev(datetime), zone)
        if instant <= at_or_before and (not found or instant < found[-1]):
            found.append(instant)
    return found
