"""Plain mappings <-> :class:`JobSpec`.

One parser serves job files (TOML/JSON) and the wire (msgpack in KV): the canonical
mapping that :func:`job_to_dict` writes is a valid job-file entry, so what an
operator writes and what the master stores are the same shape. Unknown fields are
errors, so a typo never silently becomes a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from natsched.calendars import CalendarRule
from natsched.errors import SpecError
from natsched.models import (
    Balance,
    JobSpec,
    Misfire,
    Mode,
    Notify,
    Overlap,
    RetryPolicy,
    Targets,
)
from natsched.parsing import (
    parse_datetime,
    parse_duration,
    parse_size,
    read_bool,
    read_enum,
    read_fraction,
    read_int,
    read_str,
    read_str_list,
    read_table,
)
from natsched.triggerpolicy import TriggerPolicy
from natsched.triggers.registry import parse_trigger, trigger_to_dict

# parse_duration and parse_datetime are read here by the CLI and tests, as before they moved.
__all__ = ["job_to_dict", "parse_datetime", "parse_duration", "parse_job"]

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
        "trigger",
        "output_limit",
    }
)


_TARGET_FIELDS = frozenset({"agents", "tags", "pools"})
# Choices named in an error, listed once (not per decoded job: 100k of them at a master's start).
_MODES = [m.value for m in Mode]
_OVERLAPS = [o.value for o in Overlap]
_MISFIRES = [m.value for m in Misfire]
_BALANCES = [b.value for b in Balance]


def _targets(value: object) -> Targets:
    data = read_table(value, "targets", _TARGET_FIELDS)
    return _shared_targets(
        read_str_list(data.get("agents", []), "targets.agents"),
        read_str_list(data.get("tags", []), "targets.tags"),
        read_str_list(data.get("pools", []), "targets.pools"),
    )


@lru_cache(maxsize=4096)
def _shared_targets(agents: tuple[str, ...], tags: tuple[str, ...], pools: tuple[str, ...]) -> Targets:
    # Most jobs share a few target sets: validated once, one frozen object held by all of them.
    return Targets(agents=agents, tags=tags, pools=pools)


def _retries(value: object) -> RetryPolicy:
    if isinstance(value, int) and not isinstance(value, bool):
        return RetryPolicy(attempts=value)
    data = read_table(value, "retries", frozenset({"attempts", "backoff", "max_backoff", "jitter"}))
    defaults = RetryPolicy()
    return RetryPolicy(
        attempts=read_int(data.get("attempts", 0), "retries.attempts"),
        backoff=parse_duration(data.get("backoff", defaults.backoff), "retries.backoff"),
        max_backoff=parse_duration(data.get("max_backoff", defaults.max_backoff), "retries.max_backoff"),
        jitter=read_fraction(data.get("jitter", defaults.jitter), "retries.jitter"),
    )


_NO_RETRIES = _retries({})  # frozen: shared by every job that has no retries table


def _command(value: object, shell: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        if not shell:
            raise SpecError(
                "is a string; give an argv list, or set shell = true to run it with /bin/sh -c",
                field="command",
            )
        return (value,)
    return read_str_list(value, "command")


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError('must be a table of NAME = "value"', field="env")
    env: dict[str, str] = {}
    for name, val in value.items():
        if (
            not isinstance(val, str | int | float)
            or isinstance(val, bool)
            or (isinstance(val, float) and not math.isfinite(val))
        ):
            raise SpecError(f"value of {str(name)[:64]!r} must be a string", field="env")
        env[read_str(name, "env")] = read_str(str(val), "env")
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
    shell = read_bool(data.get("shell", False), "shell")
    triggers = data.get("triggers", [])
    if isinstance(triggers, Mapping):
        triggers = [triggers]
    if not isinstance(triggers, list):
        raise SpecError("must be a list of tables", field="triggers")
    timeout = data.get("timeout")
    return JobSpec(
        name=read_str(data["name"], "name"),
        group=read_str(group, "group"),
        command=_command(data["command"], shell),
        shell=shell,
        mode=read_enum(Mode, data.get("mode", "mirror"), "mode", _MODES),
        targets=_targets(data["targets"]),
        triggers=tuple(parse_trigger(t, str(group)) for t in triggers),
        timeout=None if timeout is None else parse_duration(timeout, "timeout"),
        retries=_retries(data["retries"]) if "retries" in data else _NO_RETRIES,
        overlap=read_enum(Overlap, data.get("overlap", "allow"), "overlap", _OVERLAPS),
        misfire=read_enum(Misfire, data.get("misfire", "skip"), "misfire", _MISFIRES),
        misfire_cap=read_int(data.get("misfire_cap", 10), "misfire_cap"),
        balance=read_enum(Balance, data.get("balance", "priority"), "balance", _BALANCES),
        env=_env(data.get("env", {})),
        cwd=None if data.get("cwd") is None else read_str(data["cwd"], "cwd"),
        user=None if data.get("user") is None else read_str(data["user"], "user"),
        enabled=read_bool(data.get("enabled", True), "enabled"),
        description=read_str(data.get("description", ""), "description"),
        calendar=None if data.get("calendar") is None else _calendar_rule(data["calendar"]),
        redispatch_lost=read_bool(data.get("redispatch_lost", False), "redispatch_lost"),
        notify=parse_notify(data["notify"]) if "notify" in data else (),
        trigger=_trigger_policy(data["trigger"]) if "trigger" in data else _DEFAULT_TRIGGER_POLICY,
        output_limit=None
        if data.get("output_limit") is None
        else parse_size(data["output_limit"], "output_limit"),
    )


def _trigger_policy(value: object) -> TriggerPolicy:
    data = read_table(value, "trigger", frozenset({"env", "args"}))
    return TriggerPolicy(
        env=read_str_list(data.get("env", []), "trigger.env"),
        args=read_bool(data.get("args", False), "trigger.args"),
    )


_DEFAULT_TRIGGER_POLICY = _trigger_policy({})  # frozen: shared by every job without one


def parse_notify(value: object) -> tuple[Notify, ...]:
    """``notify`` of a job or of a group's settings: a table or a list of tables."""
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list):
        raise SpecError("must be a list of tables", field="notify")
    out = []
    for item in items:
        data = read_table(item, "notify", frozenset({"on", "webhook", "email", "subject"}))
        out.append(
            Notify(
                on=read_str_list(data.get("on", ["failure", "lost", "chain_failed"]), "notify.on"),
                webhook=read_str(data.get("webhook", ""), "notify.webhook"),
                email=read_str(data.get("email", ""), "notify.email"),
                subject=read_str(data.get("subject", ""), "notify.subject"),
            )
        )
    return tuple(out)


def notify_target(text: str, on: list[str] | None = None) -> dict[str, Any]:
    """One target written as a word (a flag, a config list): an http(s) URL is a webhook, a
    word with ``@`` an e-mail address, anything else a NATS subject."""
    kind = "webhook" if text.startswith(("http://", "https://")) else "email" if "@" in text else "subject"
    return {kind: text, **({"on": on} if on else {})}


def _optional_size(value: object, field: str) -> int | None:
    return None if value is None else parse_size(value, field)


def notify_to_dicts(targets: tuple[Notify, ...]) -> list[dict[str, Any]]:
    return [
        _non_empty(("on", n.on), ("webhook", n.webhook), ("email", n.email), ("subject", n.subject))
        for n in targets
    ]


def _calendar_rule(value: object) -> CalendarRule:
    data = read_table(value, "calendar", frozenset({"only", "skip"}))
    return CalendarRule(
        only=read_str_list(data.get("only", []), "calendar.only"),
        skip=read_str_list(data.get("skip", []), "calendar.skip"),
    )


_DEFAULT_SPEC = JobSpec(name="x", group="x", command=("x",), targets=Targets(agents=("*",)))


_SCALARS = (
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
    "output_limit",
)


def job_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The canonical mapping of a job: a valid job-file entry, defaults left out."""
    out: dict[str, Any] = {
        "name": spec.name,
        "group": spec.group,
        "command": list(spec.command) if not spec.shell else spec.command[0],
        "targets": _non_empty(
            ("agents", spec.targets.agents), ("tags", spec.targets.tags), ("pools", spec.targets.pools)
        ),
    }
    defaults = _DEFAULT_SPEC
    if spec.shell:
        out["shell"] = True
    if spec.triggers:
        out["triggers"] = [trigger_to_dict(t) for t in spec.triggers]
    if spec.retries != defaults.retries:
        r = spec.retries
        retries = {"attempts": r.attempts, "backoff": r.backoff, "max_backoff": r.max_backoff}
        out["retries"] = {**retries, "jitter": r.jitter}
    for name in _SCALARS:
        value = getattr(spec, name)
        if value != getattr(defaults, name):
            out[name] = value.value if hasattr(value, "value") else value
    if spec.env:
        out["env"] = dict(spec.env)
    if spec.notify:
        out["notify"] = notify_to_dicts(spec.notify)
    if spec.trigger != defaults.trigger:
        out["trigger"] = {"env": list(spec.trigger.env), "args": spec.trigger.args}
    if spec.calendar is not None:
        out["calendar"] = _non_empty(("only", spec.calendar.only), ("skip", spec.calendar.skip))
    return out


def _non_empty(*fields: tuple[str, str | tuple[str, ...]]) -> dict[str, Any]:
    """The fields that are set; tuples written as lists, as a job file has them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields if v}
