"""Dispatch messages between master and agents (msgpack, ``"v": 1``).

A dispatch carries the job's whole canonical definition, so an agent runs exactly what
the master decided on, even if its cache has not caught up with a change yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from natsched import codec
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
                "spec": job_to_dict(self.spec),
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


def decode_run_request(data: bytes) -> RunRequest:
    obj = codec.unpack(data, "run request")
    obj.pop(codec.VERSION_KEY)
    try:
        spec = parse_job(obj.pop("spec"), source="run request")
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
        return codec.pack(asdict(self))


def decode_run_reply(data: bytes) -> RunReply:
    obj: dict[str, Any] = codec.unpack(data, "run reply")
    obj.pop(codec.VERSION_KEY)
    try:
        return RunReply(**obj)
    except TypeError as exc:
        raise CodecError(f"run reply: {exc}") from None
