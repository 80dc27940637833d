"""Readers of job-file values: each returns the typed value or raises one SpecError naming the field.

Shared by ``jobspec.py`` (the job's own fields) and every trigger kind in ``triggers/`` (its
fields), so a duration or a list of strings is read, and refused, the same way everywhere.
Job files (TOML/JSON) and the wire (msgpack) go through the same readers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any, TypeVar

from natsched import subjects
from natsched.errors import SpecError

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?"
    r"\s*(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+(?:\.\d+)?)ms)?\s*$"
)
_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_E = TypeVar("_E")


def parse_duration(value: object, field: str) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"``."""
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a duration", field=field)
    if isinstance(value, int | float):
        if not math.isfinite(value):  # TOML has nan and inf; "timeout = nan" is no timeout
            raise SpecError(f"{value!r} is not a duration", field=field)
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match and any(match.groups()):
            d, h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
            return d * 86400 + h * 3600 + m * 60 + s + ms / 1000
    raise SpecError(f"{value!r} is not a duration (use seconds or e.g. '90s', '5m', '1h30m')", field=field)


def parse_size(value: object, field: str) -> int:
    """Bytes from an integer or a string like ``"512KiB"``, ``"4MiB"``, ``"1G"`` (units of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise SpecError(f"{value!r} is not a size (use bytes or e.g. '512KiB', '4MiB', '1GiB')", field=field)
    return int(match.group(1)) * _UNITS[match.group(2)[:1].lower()]


def parse_datetime(value: object, field: str) -> datetime:
    """An aware datetime from a TOML datetime or an ISO 8601 string."""
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, str):
        try:
            result = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(f"{value!r} is not an ISO 8601 date-time", field=field) from None
    elif isinstance(value, date):
        raise SpecError(f"{value!r} is a date; give a date-time with an offset", field=field)
    else:
        raise SpecError(f"{value!r} is not a date-time", field=field)
    if result.tzinfo is None:
        raise SpecError(f"{value!r} needs a time zone offset, e.g. 2026-01-01T09:00:00Z", field=field)
    return result


def read_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"must be a string, not {type(value).__name__}", field=field)
    if "\0" in value:  # no program takes NUL in argv, env, paths or names: refuse at apply
        raise SpecError("contains a NUL character", field=field)
    return value


def read_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"must be true or false, not {value!r}", field=field)
    return value


def read_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"must be an integer, not {value!r}", field=field)
    return value


def read_fraction(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise SpecError(f"must be a number between 0 and 1, not {value!r}", field=field)
    return float(value)


def read_str_list(value: object, field: str) -> tuple[str, ...]:
    """A list of strings; a single string is a list of one."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SpecError("must be a list of strings", field=field)
    return tuple(read_str(v, field) for v in value)


def read_enum(kind: Callable[[str], _E], value: object, field: str, choices: list[str]) -> _E:
    try:
        return kind(read_str(value, field))
    except ValueError:
        raise SpecError(f"{value!r} is not one of {', '.join(choices)}", field=field) from None


def read_table(value: object, field: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    """A mapping whose keys are all in ``allowed``: a typo is an error, never a silent default."""
    if not isinstance(value, Mapping):
        raise SpecError("must be a table", field=field)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SpecError(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}", field=field
        )
    return value


def check_tokens(field: str, values: Iterable[str]) -> None:
    """Every value is a single subject token (names end up in subjects and keys)."""
    for value in values:
        if not subjects.is_token(value):
            raise SpecError(f"{subjects.shown(value)} must be {subjects.TOKEN_RULE}", field=field)
