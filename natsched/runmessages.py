"""Dispatch messages between master and agents (msgpack, ``"v": 1``).

A dispatch carries the job's whole canonical definition, so an agent runs exactly what
the master decided on, even if its cache has not caught up with a change yet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from natsched import codec, subjects
from natsched.errors import CodecError, SpecError
from natsched.jobspec import job_to_dict, parse_job
from natsched.models import JobSpec
from natsched.vocab import RunTrigger, run_trigger


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRequest:
    run_id: str
    spec: JobSpec
    trigger: RunTrigger
    scheduled_at: float | None = None
    attempt: int = 1
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    correlation_id: str = ""
    master: str = ""
    detail: dict[str, str] = field(default_factory=dict)  # e.g. {"retry_of": "<run id>"}
    term: int = 0  # the leader lease's term the master knew: agents refuse a lower one

    def encode(self) -> bytes:
        # Field by field, not dataclasses.asdict: that deep-copies the whole spec on every dispatch.
        return codec.pack(
            {
                "run_id": self.run_id,
                "spec": _spec_dict(self.spec),
                "trigger": self.trigger.value,
                "scheduled_at": self.scheduled_at,
                "attempt": self.attempt,
                "args": list(self.args),
                "env": self.env,
                "correlation_id": self.correlation_id,
                "master": self.master,
                "detail": self.detail,
                "term": self.term,
            }
        )


# The wire form of the definitions dispatched lately: a job's runs carry the same (immutable)
# definition each time, and rebuilding its dict was a tenth of the master's Python per run.
_DICTS: OrderedDict[int, tuple[JobSpec, dict[str, Any]]] = OrderedDict()
SPEC_DICTS = 1024


def _spec_dict(spec: JobSpec) -> dict[str, Any]:
    cached = _DICTS.get(id(spec))
    if cached is not None and cached[0] is spec:  # the spec is held here, so its id is not reused
        return cached[1]
    as_dict = _DICTS[id(spec)] = (spec, job_to_dict(spec))
    if len(_DICTS) > SPEC_DICTS:
        _DICTS.popitem(last=False)
    return as_dict[1]


MAX_RUN_TEXT = 4096  # characters of one arg, env value, detail value of a run
MAX_RUN_NAME = 256  # characters of one env or detail name


def is_run_text(value: object, limit: int = MAX_RUN_TEXT) -> bool:
    """A string a run may carry into argv or the environment: bounded, without NUL. The master
    checks a trigger's args and env with it, so what it dispatches no agent refuses."""
    return isinstance(value, str) and len(value) <= limit and "\0" not in value


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _texts(value: object) -> bool:
    return isinstance(value, list | tuple) and all(is_run_text(v) for v in value)


def _text_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        is_run_text(k, MAX_RUN_NAME) and is_run_text(v) for k, v in value.items()
    )


# Each field's shape: the run id and the rest end up in subjects, headers, argv and the
# environment, so a value of the wrong type or size is refused in the reply, not met later
# as an exception in a callback (no reply at all) or as a message the server rejects.
_REQUEST_FIELDS: dict[str, Callable[[object], bool]] = {
    "run_id": subjects.is_token,
    "scheduled_at": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)),
    "attempt": _count,
    "args": _texts,
    "env": _text_map,
    "correlation_id": lambda v: is_run_text(v, 200),
    "master": lambda v: is_run_text(v, 256),
    "detail": _text_map,
    "term": _count,
}


def _check_request_fields(obj: dict[str, Any]) -> None:
    known = {f.name for f in fields(RunRequest)}
    unknown = sorted(repr(k)[:40] for k in set(obj) - known)
    if unknown:
        raise CodecError(f"run request: unknown field(s) {', '.join(unknown[:5])}")
    for name, value in obj.items():
        check = _REQUEST_FIELDS.get(name)
        if check is not None and not check(value):
            raise CodecError(f"run request: field {name!r} has the wrong type or size")


# Definitions parsed lately, by their msgpack: a job's runs carry the same definition each
# time, and validating it again (parse_job) was most of an agent's decoding of a request.
_PARSED: OrderedDict[bytes, JobSpec] = OrderedDict()
PARSED_SPECS = 512


def _parse_spec(obj: object) -> JobSpec:
    if not isinstance(obj, dict):
        return parse_job(obj, source="run request")  # type: ignore[arg-type]  # it says what is wrong
    key = codec.pack(obj)
    spec = _PARSED.get(key)
    if spec is None:
        spec = _PARSED[key] = parse_job(obj, source="run request")
        if len(_PARSED) > PARSED_SPECS:
            _PARSED.popitem(last=False)
    return spec


def decode_run_request(data: bytes) -> RunRequest:
    obj = codec.unpack(data, "run request")
    obj.pop(codec.VERSION_KEY)
    _check_request_fields(obj)
    try:
        spec = _parse_spec(obj.pop("spec"))
        if not isinstance(obj.get("trigger"), str):
            raise TypeError("trigger is not a string")
        trigger = run_trigger(obj.pop("trigger"))
        return RunRequest(spec=spec, trigger=trigger, **{**obj, "args": tuple(obj.get("args", ()))})
    except (KeyError, TypeError, SpecError) as exc:
        raise CodecError(f"run request: {exc}") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunReply:
    """The agent's answer: started (with pid), or refused/failed with a reason."""

    ok: bool
    agent: str
    run_id: str = ""
    pid: int | None = None
    state: str = ""
    reason: str = ""

    def encode(self) -> bytes:
        # Field by field: dataclasses.asdict deep-copies, once per dispatched run.
        return codec.pack({f: getattr(self, f) for f in _REPLY_FIELDS})


_REPLY_FIELDS = tuple(f.name for f in fields(RunReply))


def decode_run_reply(data: bytes) -> RunReply:
    obj: dict[str, Any] = codec.unpack(data, "run reply")
    obj.pop(codec.VERSION_KEY)
    try:
        return RunReply(**obj)
    except TypeError as exc:
        raise CodecError(f"run reply: {exc}") from None
