"""Cron expressions: 5 fields, or 6 with a leading seconds field, in a time zone."""

from __future__ import annotations

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
