"""Run events: every state change of a run, as JSON on ``natsched.event.<agent>.<job>.<state>``.

Events go into the ``NATSCHED_EVENTS`` stream with ``Nats-Msg-Id = <run_id>.<state>``,
so a retried publish (after a reconnect, or from the agent's outbox) is stored once.
The payload is JSON because people and other languages read it (``nats sub
'natsched.event.>'``); its schema is in the README.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from typing import Any

from natsched import codec, subjects
from natsched.errors import CodecError
from natsched.vocab import RunState, RunTrigger, run_trigger

__all__ = ["RunEvent", "RunState", "RunTrigger", "new_run_id", "parse_event", "parse_record", "tail_text"]

OUTPUT_TAIL_BYTES = 4096
MSG_ID_HEADER = "Nats-Msg-Id"
_HOST = os.uname().nodename  # asked once: every event carries it


def new_run_id() -> str:
    """Sortable by start time (ms prefix), unique across hosts; one subject token."""
    # 48 random bits, as uuid4().hex[:12] gave, without building a UUID on every dispatch.
    return f"{int(time.time() * 1000):x}-{os.urandom(6).hex()}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunEvent:
    run_id: str
    job: str  # <group>.<job>
    agent: str
    state: RunState
    trigger: RunTrigger
    scheduled_at: float | None = None  # the slot this run is for (epoch seconds)
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    reason: str = ""
    output_tail: str = ""
    output_bytes: int = 0
    attempt: int = 1
    detail: dict[str, str] = field(default_factory=dict)  # e.g. {"file": "/in/a.csv"}
    at: float = field(default_factory=time.time)
    host: str = field(default_factory=lambda: _HOST)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def subject(self) -> str:
        return subjects.event_subject(self.agent, self.job, self.state.value)

    @property
    def msg_id(self) -> str:
        if self.state is RunState.QUEUED:
            # A run is queued again by its agent's next life (agent/recovery.py): with one id
            # for both, JetStream dropped the second as a duplicate, and the leader took the
            # run for one its previous life left open (lost, and started again elsewhere while
            # the agent still held it). Each queuing is its own record; a retry still lands once.
            return f"{self.run_id}.queued.{int(self.at * 1000):x}"
        return f"{self.run_id}.{self.state.value}"

    def moved_to(self, state: RunState, **changes: Any) -> RunEvent:
        # What dataclasses.replace does, without its per-field checks (half the time; three
        # times per run on an agent). A name that is no field raises TypeError, as there.
        data = {name: getattr(self, name) for name in _EVENT_FIELDS}
        data.update(changes, state=state, at=time.time())
        return RunEvent(**data)

    def to_record(self) -> bytes:
        """The event for this host's own records (the agent's run journal): msgpack, several
        times cheaper to encode than JSON, read back by :func:`parse_record`."""
        return codec.pack(self._plain())

    def to_json(self) -> bytes:
        data = self._plain()
        data["duration"] = self.duration
        return codec.to_json(data)

    def _plain(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict (a deep copy per event, on the hot path).
        data = {name: getattr(self, name) for name in _EVENT_FIELDS}
        data["state"] = self.state.value
        data["trigger"] = self.trigger.value
        return data


_EVENT_FIELDS = tuple(f.name for f in fields(RunEvent))


def tail_text(data: bytes, limit: int = OUTPUT_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of output as text (a cut multi-byte character is replaced)."""
    return data[-limit:].decode("utf-8", errors="replace")


# Field -> the JSON types it may have (None allowed where the field is optional).
_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "job": (str,),
    "agent": (str,),
    "trigger": (str,),
    "scheduled_at": (*_NUMBER, type(None)),
    "started_at": (*_NUMBER, type(None)),
    "ended_at": (*_NUMBER, type(None)),
    "exit_code": (int, type(None)),
    "signal": (int, type(None)),
    "pid": (int, type(None)),
    "reason": (str,),
    "output_tail": (str,),
    "output_bytes": (int,),
    "attempt": (int,),
    "detail": (dict,),
    "at": _NUMBER,
    "host": (str,),
}


def parse_event(data: bytes, subject: str | None) -> RunEvent:
    """A RunEvent from its JSON as received on ``subject``; CodecError if it is not one.

    ``subject=None`` only for a record this process wrote itself (the agent's journal).

    Only what the subject proves is trusted: an agent may publish only on its own
    ``natsched.event.<agent>.>``, so the agent, job and state in the body must be the
    subject's. Every field must have its type (``"run_id": 12345`` is refused, not a crash
    later in a listing).
    """
    obj = codec.from_json(data, "run event", require_version=True)
    obj.pop("duration", None)
    return _event_from(obj, subject)


def parse_record(data: bytes) -> RunEvent:
    """A RunEvent from its :meth:`RunEvent.to_record` (or, as older records are, its JSON)."""
    if data[:1] == b"{":
        return parse_event(data, None)
    obj = codec.unpack(data, "run record")
    obj.pop(codec.VERSION_KEY)
    return _event_from(obj, None)


def _event_from(obj: dict[str, Any], subject: str | None) -> RunEvent:
    """The event of a decoded body, every field checked (see :func:`parse_event`)."""
    try:
        for name, value in obj.items():
            allowed = _TYPES.get(name)
            if allowed is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
                raise TypeError(f"{name} has the wrong type ({type(value).__name__})")
        obj["state"] = RunState(obj["state"])
        if not isinstance(obj.get("trigger"), str):
            raise TypeError("trigger is not a string")
        obj["trigger"] = run_trigger(obj["trigger"])
        if not subjects.is_token(obj["run_id"]) or obj.get("attempt", 1) < 1:
            raise ValueError(f"bad run id or attempt in {subjects.shown(obj['run_id'])}")
        obj["detail"] = {str(k): str(v) for k, v in (obj.get("detail") or {}).items()}
        event = RunEvent(**obj)
        expected = event.subject
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"run event: {exc}") from None
    if subject is not None and subject != expected:
        raise CodecError(
            f"run event: {subjects.shown(subject)} does not match the body "
            f"(agent {subjects.shown(event.agent)}, job {subjects.shown(event.job)}, {event.state.value})"
        )
    return event
