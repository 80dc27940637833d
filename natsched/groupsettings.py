"""A group's replicated settings: stored in ``natsched_settings`` under ``group.<group>``.

They reach every agent (cached in SQLite with the calendars and pauses, so they apply
while NATS is down) and say:

- ``replication``: ``easy`` (default) or ``strict``. Strict: the master's definitions are
  the whole truth for the group on every agent, a job an agent defines locally in that
  group is refused. Easy: a local job is kept; a master definition of the same name
  replaces it only when it was written later than the local file was modified.
- ``env``: variables every job of the group gets; a job's own ``env`` overrides them (by
  name). Same rules as a job's ``env`` (``${NAME}`` expanded on the agent, secrets).
- ``user``, ``cwd``: defaults for jobs that do not set their own.
- ``notify``: notification targets (as a job's ``notify``) for the group's jobs that have
  none of their own; used by the master's notifier (``natsched/master/notify.py``).
- ``output_limit``: output kept per run in ``NATSCHED_LOGS`` (the cap of ``agent/output.py``)
  for the group's jobs that do not set their own; the default is ``DEFAULT_OUTPUT_LIMIT``.
  How long output is kept stays a property of the stream (the master's ``--logs-max-age``):
  per-group ages would let one group's output push out another's in the shared stream anyway.

A tag layer (``group.<group>.tag.<tag>``, ``natsched settings set GROUP --tag TAG``) holds
``env``, ``user``, ``cwd``, ``output_limit`` for the group's runs on agents with that tag; it
goes over the group's settings (env merged by name, the rest replaced), several tags of one
agent in the order of their names (a later name wins). Replication and notify stay the
group's: they are decided for the group as a whole.

Precedence, lowest first: the agent's pass-through variables, the group's ``env``, its tag
layers' ``env``, the job's ``env``, a trigger's allowed ``env``, ``NATSCHED_*``.
``user``, ``cwd``, ``output_limit``: the job's, else the tag layers', else the group's. ``notify``: the job's
targets if it names any (replacing, not merged with, the group's), else the group's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from natsched.errors import SpecError
from natsched.jobspec import notify_to_dicts, parse_notify
from natsched.models import DEFAULT_OUTPUT_LIMIT, MAX_OUTPUT_LIMIT, MIN_OUTPUT_LIMIT, Notify
from natsched.parsing import parse_size, read_str
from natsched.secrets import references

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_FIELDS = frozenset({"replication", "env", "user", "cwd", "notify", "output_limit"})
TAG_FIELDS = frozenset({"env", "user", "cwd", "output_limit"})
MAX_ENV = 256


class Replication(StrEnum):
    """How an agent treats the jobs it defines locally in a group."""

    EASY = "easy"
    STRICT = "strict"


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupSettings:
    group: str
    replication: Replication = Replication.EASY
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: str | None = None
    notify: tuple[Notify, ...] = ()
    output_limit: int | None = None
    tag: str | None = None  # set: a layer for the group's runs on agents with this tag

    def __post_init__(self) -> None:
        if len(self.env) > MAX_ENV:
            raise SpecError(f"at most {MAX_ENV} variables", field="env")
        for name, value in self.env.items():
            if not _ENV_NAME.match(name):
                raise SpecError(f"{name[:64]!r} is not a variable name", field="env")
            if not isinstance(value, str) or "\0" in value:
                raise SpecError(f"value of {name!r} must be a string without NUL", field="env")
        if self.cwd is not None and not self.cwd.startswith("/"):
            raise SpecError(f"{self.cwd!r} must be an absolute path", field="cwd")
        for name in ("user", "cwd"):
            value = getattr(self, name)
            if value is not None and (not value or "\0" in value):
                raise SpecError("must be a non-empty string without NUL", field=name)
        if self.output_limit is not None and not MIN_OUTPUT_LIMIT <= self.output_limit <= MAX_OUTPUT_LIMIT:
            raise SpecError("must be between 4KiB and 1GiB", field="output_limit")

    @property
    def secret_names(self) -> set[str]:
        return references(self.env.values())


def parse_group_settings(data: Mapping[str, Any], group: str, tag: str | None = None) -> GroupSettings:
    """Validate a settings mapping (from ``natsched settings set`` or the bucket); with ``tag``,
    a tag layer, which holds only what an agent applies to a run (``TAG_FIELDS``)."""
    if not isinstance(data, Mapping):
        raise SpecError("must be a table", field="settings")
    allowed = _FIELDS if tag is None else TAG_FIELDS
    unknown = sorted(set(data) - allowed - {"group", "tag", "v"})
    if unknown:
        where = "" if tag is None else f" for tag {tag} (replication and notify are the whole group's)"
        raise SpecError(
            f"unknown field(s) {', '.join(unknown)}{where}; allowed: {', '.join(sorted(allowed))}"
        )
    raw_mode = data.get("replication", Replication.EASY.value)
    if raw_mode not in {m.value for m in Replication}:
        raise SpecError(f"{raw_mode!r} is not one of strict, easy", field="replication")
    env = data.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
        raise SpecError('must be a table of NAME = "value"', field="env")
    return GroupSettings(
        group=group,
        replication=Replication(raw_mode),
        env={str(k): v for k, v in env.items()},
        user=None if data.get("user") is None else read_str(data["user"], "user"),
        cwd=None if data.get("cwd") is None else read_str(data["cwd"], "cwd"),
        notify=parse_notify(data.get("notify", [])),
        output_limit=None
        if data.get("output_limit") is None
        else parse_size(data["output_limit"], "output_limit"),
        tag=tag,
    )


def group_settings_to_dict(settings: GroupSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"group": settings.group}
    if settings.tag is None:
        out["replication"] = settings.replication.value
    else:
        out["tag"] = settings.tag
    if settings.env:
        out["env"] = dict(settings.env)
    for name in ("user", "cwd"):
        if getattr(settings, name) is not None:
            out[name] = getattr(settings, name)
    if settings.notify:
        out["notify"] = notify_to_dicts(settings.notify)
    if settings.output_limit is not None:
        out["output_limit"] = settings.output_limit
    return out


def layered(base: GroupSettings | None, layers: list[GroupSettings]) -> GroupSettings | None:
    """What an agent applies: the group's settings under its tags' layers (in the order given,
    a later layer winning): ``env`` merged by name, ``user``, ``cwd``, ``output_limit`` replaced."""
    if not layers:
        return base
    result = base or GroupSettings(group=layers[0].group)
    for layer in layers:
        result = replace(
            result,
            env={**result.env, **layer.env},
            user=layer.user or result.user,
            cwd=layer.cwd or result.cwd,
            output_limit=result.output_limit if layer.output_limit is None else layer.output_limit,
        )
    return result


def notify_targets(job: tuple[Notify, ...], group: GroupSettings | None) -> tuple[Notify, ...]:
    """A job's own targets, else its group's: a job that names targets replaces the group's."""
    return job or (group.notify if group else ())


def output_limit(job: int | None, group: GroupSettings | None) -> int:
    """A job's own cap, else its group's, else the default."""
    if job is not None:
        return job
    if group is not None and group.output_limit is not None:
        return group.output_limit
    return DEFAULT_OUTPUT_LIMIT
