"""What each ``natsched.api.*`` request may contain: its fields, their types, nothing else.

Checked before any handler runs, so a handler reads fields it can trust: ``"prune":
"false"`` (a string) is refused instead of being truthy, a typo like ``"dryrun"`` is
refused instead of being ignored (and the apply happening for real), ``{"agent": 5}`` is
refused instead of pausing an agent named "5". Every API subject has an entry here; a
test walks the master's handlers to keep it that way. ``null`` means "not given".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from natsched import subjects
from natsched.errors import ApiError

MAX_TEXT = 4096  # a source path, a note, a format: short free text
MAX_JOBS = 10_000  # job names in one delete/enable/disable request


@dataclass(frozen=True, slots=True)
class Field:
    """One request field: what it must be (for the error) and the test."""

    must_be: str
    check: Callable[[object], bool]
    hidden: bool = False  # a secret's value: an error never shows what was sent


def _text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _content(value: object) -> bool:
    return isinstance(value, str)  # bounded by the server's max_payload


def _job_list(value: object) -> bool:
    return (
        isinstance(value, list) and 0 < len(value) <= MAX_JOBS and all(subjects.is_job_ref(v) for v in value)
    )


def _job_key(value: object) -> bool:
    return subjects.is_job_ref(value) and "." in str(value)


TEXT = Field(f"a string of at most {MAX_TEXT} characters", _text)
CONTENT = Field("a string (the job file's text)", _content)
BOOL = Field("true or false", lambda v: isinstance(v, bool))
NAME = Field(f"a name of {subjects.TOKEN_RULE}", subjects.is_token)
JOB = Field("a job name, <group>.<job> or a bare name", subjects.is_job_ref)
JOB_KEY = Field("a job as <group>.<job>", _job_key)
JOBS = Field(f"a non-empty list of at most {MAX_JOBS} job names", _job_list)
OBJECT = Field("an object", lambda v: isinstance(v, dict))
SECRET = Field("a non-empty string", lambda v: isinstance(v, str) and bool(v), hidden=True)

FIELDS: dict[str, dict[str, Field]] = {
    subjects.API_PING: {},
    subjects.API_APPLY: {"source": TEXT, "content": CONTENT, "format": TEXT, "prune": BOOL, "dry_run": BOOL},
    subjects.API_JOBS_LIST: {"group": NAME, "agent": NAME},
    subjects.API_JOBS_GET: {"job": JOB},
    subjects.API_JOBS_DELETE: {"jobs": JOBS},
    subjects.API_JOBS_ENABLE: {"jobs": JOBS},
    subjects.API_JOBS_DISABLE: {"jobs": JOBS},
    subjects.API_RUNS_CANCEL: {"run_id": NAME},
    subjects.API_CALENDARS_SET: {"calendar": OBJECT},
    subjects.API_CALENDARS_LIST: {},
    subjects.API_CALENDARS_DELETE: {"name": NAME},
    subjects.API_PAUSE: {"job": JOB_KEY, "agent": NAME, "mode": TEXT, "note": TEXT},
    subjects.API_RESUME: {"job": JOB_KEY, "agent": NAME},
    subjects.API_SECRETS_SET: {"name": NAME, "value": SECRET},
    subjects.API_SECRETS_LIST: {},
    subjects.API_SECRETS_DELETE: {"name": NAME},
    subjects.API_SETTINGS_SET: {"group": NAME, "tag": NAME, "settings": OBJECT},
    subjects.API_SETTINGS_GET: {"group": NAME},
    subjects.API_SETTINGS_DELETE: {"group": NAME, "tag": NAME},
}


def check_request(subject: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The request without its ``null`` fields; ApiError naming the first field that is wrong."""
    fields = FIELDS.get(subject)
    if fields is None:  # a handler without a schema is a bug, not a reason to accept anything
        raise ApiError(f"{subject} has no request schema")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise ApiError(
            f"unknown request field(s) {', '.join(subjects.shown(u, 40) for u in unknown[:5])}; "
            f"allowed: {allowed}"
        )
    given = {name: value for name, value in body.items() if value is not None}
    for name, value in given.items():
        field = fields[name]
        if not field.check(value):
            sent = f"a {type(value).__name__}" if field.hidden else subjects.shown(value, 60)
            raise ApiError(f"request field {name!r} must be {field.must_be}, not {sent}")
    return given
