"""Calendars and pauses: the settings that hold runs back.

Both live in the replicated settings bucket (``natsched_settings``) so masters and agents
see the same ones: ``calendar.<name>`` (days and windows) and ``pause.job.<group>.<job>``
/ ``pause.agent.<agent>`` (maintenance mode). Agents keep their own copy in their cache,
so a mirror job honours them while NATS is down.

A calendar contains a moment when its local date (in the calendar's time zone) is one of
``dates``, its weekday one of ``weekdays``, or it falls in one of ``windows``. A job's
``calendar = { only = [...], skip = [...] }`` lets a scheduled or chained run go ahead only
on days of an ``only`` calendar and never on days of a ``skip`` one; manual runs
(``natsched run``, triggers) are the operator's explicit choice and are not held back.
A pause holds back every run of the job (or on the agent) but manual ones, either
skipping them (recorded ``skipped``) or queueing them to start on resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from natsched import subjects
from natsched.errors import SpecError
from natsched.triggers.cron import validate_timezone
from natsched.vocab import RunTrigger

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CALENDAR_PREFIX = "calendar."
PAUSE_JOB_PREFIX = "pause.job."
PAUSE_AGENT_PREFIX = "pause.agent."


@dataclass(frozen=True, kw_only=True, slots=True)
class Calendar:
    name: str
    timezone: str = "UTC"
    dates: frozenset[date] = frozenset()
    weekdays: frozenset[int] = frozenset()  # 0 = Monday
    windows: tuple[tuple[float, float], ...] = ()  # epoch seconds, [start, end)
    description: str = ""

    def __post_init__(self) -> None:
        if not subjects.is_token(self.name):
            raise SpecError(f"calendar name {subjects.shown(self.name)} must be {subjects.TOKEN_RULE}")
        try:
            validate_timezone(self.timezone)
        except ValueError as exc:
            raise SpecError(str(exc), field="timezone") from None
        for start, end in self.windows:
            if end <= start:
                raise SpecError("a window must end after it starts", field="windows")

    def contains(self, ts: float) -> bool:
        local = datetime.fromtimestamp(ts, ZoneInfo(self.timezone))
        if local.date() in self.dates or local.weekday() in self.weekdays:
            return True
        return any(start <= ts < end for start, end in self.windows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timezone": self.timezone,
            "dates": sorted(d.isoformat() for d in self.dates),
            "weekdays": [WEEKDAYS[d] for d in sorted(self.weekdays)],
            "windows": [
                {
                    "start": datetime.fromtimestamp(s).astimezone().isoformat(),
                    "end": datetime.fromtimestamp(e).astimezone().isoformat(),
                }
                for s, e in self.windows
            ],
            "description": self.description,
        }


def parse_calendar(data: Mapping[str, Any], name: str | None = None) -> Calendar:
    """A calendar from its mapping (file or wire); SpecError naming the field."""
    unknown = sorted(set(data) - {"name", "timezone", "dates", "weekdays", "windows", "description", "v"})
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)}", field=unknown[0])
    for field_name in ("dates", "weekdays", "windows"):
        if not isinstance(data.get(field_name, []), list):
            raise SpecError("must be a list", field=field_name)
    if not isinstance(data.get("name", ""), str) or not isinstance(data.get("timezone", ""), str):
        raise SpecError("name and timezone must be strings", field="name")
    try:
        dates = frozenset(date.fromisoformat(str(d)) for d in data.get("dates", []))
    except ValueError as exc:
        raise SpecError(f"{exc}; give dates as YYYY-MM-DD", field="dates") from None
    weekdays: set[int] = set()
    for day in data.get("weekdays", []):
        if str(day).lower()[:3] not in WEEKDAYS:
            raise SpecError(f"{day!r} is not a weekday (mon..sun)", field="weekdays")
        weekdays.add(WEEKDAYS.index(str(day).lower()[:3]))
    windows: list[tuple[float, float]] = []
    for window in data.get("windows", []):
        try:
            start, end = (datetime.fromisoformat(str(window[k])) for k in ("start", "end"))
        except (KeyError, TypeError, ValueError):
            raise SpecError(
                "each window needs start and end as ISO times with an offset", field="windows"
            ) from None
        if start.tzinfo is None or end.tzinfo is None:
            raise SpecError("window times need a time zone offset", field="windows")
        windows.append((start.timestamp(), end.timestamp()))
    return Calendar(
        name=str(name or data.get("name", "")),
        timezone=str(data.get("timezone", "UTC")),
        dates=dates,
        weekdays=frozenset(weekdays),
        windows=tuple(windows),
        description=str(data.get("description", "")),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class CalendarRule:
    """A job's ``calendar = { only = [...], skip = [...] }``."""

    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.only or self.skip):
            raise SpecError("names no calendar; give only = [...] and/or skip = [...]", field="calendar")
        for name in (*self.only, *self.skip):
            if not subjects.is_token(name):
                raise SpecError(f"{subjects.shown(name)} is not a calendar name", field="calendar")

    def blocks(self, calendars: Mapping[str, Calendar], ts: float) -> str:
        """Why a run at ``ts`` is held back ('' if it may run). A missing calendar holds it back."""
        for name in self.skip:
            calendar = calendars.get(name)
            if calendar is None:
                return f"calendar {name!r} does not exist (skip = [{name!r}]): held back to be safe"
            if calendar.contains(ts):
                return f"calendar: {name} day"
        if self.only:
            present = [calendars[n] for n in self.only if n in calendars]
            if not present:
                return f"calendar {', '.join(self.only)} does not exist: held back to be safe"
            if not any(c.contains(ts) for c in present):
                return f"calendar: not a {' or '.join(self.only)} day"
        return ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Pause:
    mode: Literal["skip", "queue"] = "skip"
    note: str = ""
    since: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("skip", "queue"):
            raise SpecError(f"pause mode {self.mode!r} is not 'skip' or 'queue'", field="mode")


def pause_from(value: Mapping[str, Any]) -> Pause:
    """A pause as the API stores it; anything else is an error, so a garbage entry in the
    settings bucket is skipped (with a warning) instead of pausing a job or an agent."""
    unknown = sorted(str(k)[:40] for k in set(value) - {"mode", "note", "since", "v"})  # v: protocol
    if unknown or "mode" not in value:
        raise SpecError(f"not a pause (fields {unknown or 'without mode'})")
    note, since = value.get("note", ""), value.get("since", 0.0)
    if not isinstance(note, str) or isinstance(since, bool) or not isinstance(since, int | float):
        raise SpecError("not a pause (note must be a string, since a time)")
    return Pause(mode=value["mode"], note=note, since=float(since))


@dataclass(kw_only=True, slots=True)
class Holds:
    """Every calendar and pause, as last read from the settings bucket."""

    calendars: dict[str, Calendar] = field(default_factory=dict)
    job_pauses: dict[str, Pause] = field(default_factory=dict)
    agent_pauses: dict[str, Pause] = field(default_factory=dict)

    def apply(self, key: str, value: Mapping[str, Any] | None) -> None:
        """One settings entry changed (``value`` None: deleted); unknown keys are ignored."""
        if key.startswith(CALENDAR_PREFIX):
            name = key[len(CALENDAR_PREFIX) :]
            if value is None:
                self.calendars.pop(name, None)
            else:
                self.calendars[name] = parse_calendar(value, name)
            return
        for prefix, table in ((PAUSE_JOB_PREFIX, self.job_pauses), (PAUSE_AGENT_PREFIX, self.agent_pauses)):
            if key.startswith(prefix):
                target = key[len(prefix) :]
                if value is None:
                    table.pop(target, None)
                else:
                    table[target] = pause_from(value)

    def job_hold(
        self, rule: CalendarRule | None, job: str, trigger: RunTrigger, ts: float
    ) -> tuple[str, str]:
        """(action, reason): ('', '') to run, ('skip', why) or ('queue', why) to hold back."""
        if not trigger.held:
            return "", ""
        pause = self.job_pauses.get(job)
        if pause is not None:
            return pause.mode, f"job paused{': ' + pause.note if pause.note else ''}"
        if rule is not None:
            reason = rule.blocks(self.calendars, ts)
            if reason:
                return "skip", reason
        return "", ""

    def agent_hold(self, agent: str, trigger: RunTrigger | None = None) -> tuple[str, str]:
        """As job_hold for an agent pause; ``trigger=None``: whatever started the run."""
        if trigger is not None and not trigger.held:
            return "", ""
        pause = self.agent_pauses.get(agent)
        if pause is None:
            return "", ""
        return pause.mode, f"agent {agent} paused{': ' + pause.note if pause.note else ''}"
