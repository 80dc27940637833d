"""Plain mappings <-> :class:`JobSpec`.

One parser serves job files (TOML/JSON) and the wire (msgpack in KV): the canonical
mapping that :func:`job_to_dict` writes is a valid job-file entry, so what an
operator writes and what the master stores are the same shape. Unknown fields are
errors, so a typo never silently becomes a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, TypeVar

from natsched.calendars import CalendarRule
from natsched.errors import SpecError
from natsched.models import (
    Balance,
    CronTrigger,
    EventTrigger,
    FileTrigger,
    IntervalTrigger,
    JobSpec,
    Misfire,
    Mode,
    Notify,
    OnceTrigger,
    Overlap,
    RetryPolicy,
    SubjectTrigger,
    Targets,
    Trigger,
)

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?"
    r"\s*(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+(?:\.\d+)?)ms)?\s*$"
)
_JOB_FIELDS = frozenset(
    {
        "name",
        "group",
        "command",
        "shell",
        "mode",
        "targets",
        "triggers",
        "timeout",
        "retries",
        "overlap",
        "misfire",
        "misfire_cap",
        "balance",
        "env",
        "cwd",
        "user",
        "enabled",
        "description",
        "calendar",
        "redispatch_lost",
        "notify",
    }
)
_E = TypeVar("_E")


def parse_duration(value: object, field: str) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"``."""
    if isinstance(value, bool):
        raise SpecError(f"{value!r} is not a duration", field=field)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match and any(match.groups()):
            d, h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
            return d * 86400 + h * 3600 + m * 60 + s + ms / 1000
    raise SpecError(f"{value!r} is not a duration (use seconds or e.g. '90s', '5m', '1h30m')", field=field)


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


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"must be a string, not {type(value).__name__}", field=field)
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"must be true or false, not {value!r}", field=field)
    return value


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"must be an integer, not {value!r}", field=field)
    return value


def _str_list(value: object, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SpecError("must be a list of strings", field=field)
    return tuple(value)


def _enum(kind: Callable[[str], _E], value: object, field: str, choices: list[str]) -> _E:
    try:
        return kind(_str(value, field))
    except ValueError:
        raise SpecError(f"{value!r} is not one of {', '.join(choices)}", field=field) from None


def _table(value: object, field: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError("must be a table", field=field)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SpecError(
            f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}", field=field
        )
    return value


def _targets(value: object) -> Targets:
    data = _table(value, "targets", frozenset({"agents", "tags", "pools"}))
    return Targets(
        agents=_str_list(data.get("agents", []), "targets.agents"),
        tags=_str_list(data.get("tags", []), "targets.tags"),
        pools=_str_list(data.get("pools", []), "targets.pools"),
    )


_TRIGGER_KINDS = ("cron", "every", "at", "watch", "after", "subject")
_TRIGGER_FIELDS = frozenset(
    {
        "cron",
        "timezone",
        "every",
        "start",
        "jitter",
        "at",
        "watch",
        "patterns",
        "events",
        "settle",
        "recursive",
        "after",
        "on",
        "exit_codes",
        "agents",
        "wait",
        "timeout",
        "per_agent",
        "subject",
        "max_bytes",
        "match",
    }
)


def _trigger(value: object, group: str) -> Trigger:  # noqa: C901 - one branch per trigger kind reads best
    data = _table(value, "triggers", _TRIGGER_FIELDS)
    kinds = [k for k in _TRIGGER_KINDS if k in data]
    if len(kinds) != 1:
        raise SpecError(f"each trigger needs exactly one of {', '.join(_TRIGGER_KINDS)}", field="triggers")
    kind = kinds[0]
    if kind == "cron":
        return CronTrigger(
            cron=_str(data["cron"], "triggers.cron"),
            timezone=_str(data.get("timezone", "UTC"), "triggers.timezone"),
        )
    if kind == "every":
        start = data.get("start")
        return IntervalTrigger(
            every=parse_duration(data["every"], "triggers.every"),
            start=None if start is None else parse_datetime(start, "triggers.start"),
            jitter=parse_duration(data.get("jitter", 0), "triggers.jitter"),
        )
    if kind == "at":
        return OnceTrigger(at=parse_datetime(data["at"], "triggers.at"))
    if kind == "watch":
        events = _str_list(data.get("events", ["created", "modified", "moved"]), "triggers.events")
        return FileTrigger(
            watch=_str(data["watch"], "triggers.watch"),
            patterns=_str_list(data.get("patterns", ["*"]), "triggers.patterns"),
            events=events,  # type: ignore[arg-type]  # checked in FileTrigger.__post_init__
            settle=parse_duration(data.get("settle", 2.0), "triggers.settle"),
            recursive=_bool(data.get("recursive", False), "triggers.recursive"),
        )
    if kind == "after":
        codes = data.get("exit_codes", [])
        if not isinstance(codes, list):
            raise SpecError("must be a list of integers", field="triggers.exit_codes")
        return EventTrigger(
            # A bare name is a job of the same group.
            after=tuple(
                k if "." in k else f"{group}.{k}" for k in _str_list(data["after"], "triggers.after")
            ),
            on=_str(data.get("on", "succeeded"), "triggers.on"),  # type: ignore[arg-type]
            exit_codes=tuple(_int(c, "triggers.exit_codes") for c in codes),
            agents=_str_list(data.get("agents", []), "triggers.agents"),
            wait=_str(data.get("wait", "any"), "triggers.wait"),  # type: ignore[arg-type]
            timeout=parse_duration(data.get("timeout", 3600.0), "triggers.timeout"),
            per_agent=_bool(data.get("per_agent", False), "triggers.per_agent"),
        )
    return SubjectTrigger(
        subject=_str(data["subject"], "triggers.subject"),
        max_bytes=_int(data.get("max_bytes", 65536), "triggers.max_bytes"),
        match=_match(data.get("match", {})),
    )


def _match(value: object, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A subject trigger's ``match`` as dotted paths; nested tables (TOML dotted keys) flatten."""
    if not isinstance(value, Mapping):
        raise SpecError(
            "must be a table of field = value (strings, numbers, booleans)", field="triggers.match"
        )
    flat: dict[str, str | int | float | bool] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping):
            flat.update(_match(item, f"{path}."))
        elif isinstance(item, str | int | float | bool):
            flat[path] = item
        else:
            raise SpecError(
                f"{path}: only strings, numbers and booleans can be matched", field="triggers.match"
            )
    return flat


def _retries(value: object) -> RetryPolicy:
    if isinstance(value, int) and not isinstance(value, bool):
        return RetryPolicy(attempts=value)
    data = _table(value, "retries", frozenset({"attempts", "backoff", "max_backoff", "jitter"}))
    defaults = RetryPolicy()
    return RetryPolicy(
        attempts=_int(data.get("attempts", 0), "retries.attempts"),
        backoff=parse_duration(data.get("backoff", defaults.backoff), "retries.backoff"),
        max_backoff=parse_duration(data.get("max_backoff", defaults.max_backoff), "retries.max_backoff"),
        jitter=float(data.get("jitter", defaults.jitter)),
    )


def _command(value: object, shell: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        if not shell:
            raise SpecError(
                "is a string; give an argv list, or set shell = true to run it with /bin/sh -c",
                field="command",
            )
        return (value,)
    return _str_list(value, "command")


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError('must be a table of NAME = "value"', field="env")
    env: dict[str, str] = {}
    for name, val in value.items():
        if not isinstance(val, str | int | float) or isinstance(val, bool):
            raise SpecError(f"value of {name!r} must be a string", field="env")
        env[str(name)] = str(val)
    return env


def parse_job(data: Mapping[str, Any], *, default_group: str | None = None, source: str = "") -> JobSpec:
    """Validate one job mapping; raise :class:`SpecError` naming source, job and field."""
    job_name = str(data.get("name", "")) if isinstance(data, Mapping) else ""
    try:
        return _parse_job(data, default_group)
    except SpecError as exc:
        raise exc.located(source=source, job=job_name) from None


def _parse_job(data: Mapping[str, Any], default_group: str | None) -> JobSpec:
    if not isinstance(data, Mapping):
        raise SpecError("a job must be a table")
    unknown = sorted(set(data) - _JOB_FIELDS)
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)}", field=unknown[0])
    for required in ("name", "command", "targets"):
        if required not in data:
            raise SpecError("is required", field=required)
    group = data.get("group", default_group)
    if group is None:
        raise SpecError("is required (per job or as the file's top-level group)", field="group")
    shell = _bool(data.get("shell", False), "shell")
    triggers = data.get("triggers", [])
    if isinstance(triggers, Mapping):
        triggers = [triggers]
    if not isinstance(triggers, list):
        raise SpecError("must be a list of tables", field="triggers")
    timeout = data.get("timeout")
    return JobSpec(
        name=_str(data["name"], "name"),
        group=_str(group, "group"),
        command=_command(data["command"], shell),
        shell=shell,
        mode=_enum(Mode, data.get("mode", "mirror"), "mode", [m.value for m in Mode]),
        targets=_targets(data["targets"]),
        triggers=tuple(_trigger(t, str(group)) for t in triggers),
        timeout=None if timeout is None else parse_duration(timeout, "timeout"),
        retries=_retries(data.get("retries", {})),
        overlap=_enum(Overlap, data.get("overlap", "allow"), "overlap", [o.value for o in Overlap]),
        misfire=_enum(Misfire, data.get("misfire", "skip"), "misfire", [m.value for m in Misfire]),
        misfire_cap=_int(data.get("misfire_cap", 10), "misfire_cap"),
        balance=_enum(Balance, data.get("balance", "priority"), "balance", [b.value for b in Balance]),
        env=_env(data.get("env", {})),
        cwd=None if data.get("cwd") is None else _str(data["cwd"], "cwd"),
        user=None if data.get("user") is None else _str(data["user"], "user"),
        enabled=_bool(data.get("enabled", True), "enabled"),
        description=_str(data.get("description", ""), "description"),
        calendar=None if data.get("calendar") is None else _calendar_rule(data["calendar"]),
        redispatch_lost=_bool(data.get("redispatch_lost", False), "redispatch_lost"),
        notify=_notify(data.get("notify", [])),
    )


def _notify(value: object) -> tuple[Notify, ...]:
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list):
        raise SpecError("must be a list of tables", field="notify")
    out = []
    for item in items:
        data = _table(item, "notify", frozenset({"on", "webhook", "email", "subject"}))
        out.append(
            Notify(
                on=_str_list(data.get("on", ["failure", "lost", "chain_failed"]), "notify.on"),
                webhook=_str(data.get("webhook", ""), "notify.webhook"),
                email=_str(data.get("email", ""), "notify.email"),
                subject=_str(data.get("subject", ""), "notify.subject"),
            )
        )
    return tuple(out)


def _calendar_rule(value: object) -> CalendarRule:
    data = _table(value, "calendar", frozenset({"only", "skip"}))
    return CalendarRule(
        only=_str_list(data.get("only", []), "calendar.only"),
        skip=_str_list(data.get("skip", []), "calendar.skip"),
    )


def _trigger_to_dict(trigger: Trigger) -> dict[str, Any]:
    if isinstance(trigger, CronTrigger):
        return {"cron": trigger.cron, "timezone": trigger.timezone}
    if isinstance(trigger, IntervalTrigger):
        out: dict[str, Any] = {"every": trigger.every}
        if trigger.start is not None:
            out["start"] = trigger.start.isoformat()
        if trigger.jitter:
            out["jitter"] = trigger.jitter
        return out
    if isinstance(trigger, OnceTrigger):
        return {"at": trigger.at.isoformat()}
    if isinstance(trigger, FileTrigger):
        return {
            "watch": trigger.watch,
            "patterns": list(trigger.patterns),
            "events": list(trigger.events),
            "settle": trigger.settle,
            "recursive": trigger.recursive,
        }
    if isinstance(trigger, EventTrigger):
        return {
            "after": list(trigger.after),
            "on": trigger.on,
            "exit_codes": list(trigger.exit_codes),
            "agents": list(trigger.agents),
            "wait": trigger.wait,
            "timeout": trigger.timeout,
            "per_agent": trigger.per_agent,
        }
    return {"subject": trigger.subject, "max_bytes": trigger.max_bytes, "match": dict(trigger.match)}


_DEFAULT_SPEC = JobSpec(name="x", group="x", command=("x",), targets=Targets(agents=("*",)))


def job_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The canonical mapping of a job: a valid job-file entry, defaults left out."""
    out: dict[str, Any] = {
        "name": spec.name,
        "group": spec.group,
        "command": list(spec.command) if not spec.shell else spec.command[0],
        "targets": {
            k: list(v)
            for k, v in (
                ("agents", spec.targets.agents),
                ("tags", spec.targets.tags),
                ("pools", spec.targets.pools),
            )
            if v
        },
    }
    defaults = _DEFAULT_SPEC
    if spec.shell:
        out["shell"] = True
    if spec.triggers:
        out["triggers"] = [_trigger_to_dict(t) for t in spec.triggers]
    if spec.retries != defaults.retries:
        r = spec.retries
        out["retries"] = {
            "attempts": r.attempts,
            "backoff": r.backoff,
            "max_backoff": r.max_backoff,
            "jitter": r.jitter,
        }
    for name in (
        "mode",
        "timeout",
        "overlap",
        "misfire",
        "misfire_cap",
        "balance",
        "cwd",
        "user",
        "enabled",
        "description",
        "redispatch_lost",
    ):
        value = getattr(spec, name)
        if value != getattr(defaults, name):
            out[name] = value.value if hasattr(value, "value") else value
    if spec.env:
        out["env"] = dict(spec.env)
    if spec.notify:
        out["notify"] = [
            {
                k: v
                for k, v in (
                    ("on", list(n.on)),
                    ("webhook", n.webhook),
                    ("email", n.email),
                    ("subject", n.subject),
                )
                if v
            }
            for n in spec.notify
        ]
    if spec.calendar is not None:
        out["calendar"] = {
            k: list(v) for k, v in (("only", spec.calendar.only), ("skip", spec.calendar.skip)) if v
        }
    return out
