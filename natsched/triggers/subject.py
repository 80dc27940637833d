"""Subject triggers (``subject``): a message on an operator's subject. Served by the master
(``master/inbound.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from natsched import subjects
from natsched.errors import SpecError
from natsched.parsing import read_int, read_str
from natsched.triggers.base import Trigger
from natsched.vocab import RunTrigger

MatchValue = str | int | float | bool


@dataclass(frozen=True, kw_only=True, slots=True)
class SubjectTrigger(Trigger):
    """Fire on every message published to an operator-named subject pattern.

    The body (at most ``max_bytes``) reaches the process as ``$NATSCHED_MESSAGE`` and the
    subject as ``$NATSCHED_SUBJECT``. ``match``: only JSON bodies whose fields (dotted
    paths) equal these values fire.
    """

    kind = RunTrigger.SUBJECT
    key = "subject"
    fields = frozenset({"subject", "max_bytes", "match"})
    example = {"subject": "orders.*", "max_bytes": 1024, "match": {"status": "paid", "order.total": 5}}

    subject: str
    max_bytes: int = 65536
    match: Mapping[str, MatchValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = self.subject.split(".")
        if len(self.subject) > subjects.MAX_SUBJECT_LENGTH:
            raise SpecError(
                f"is longer than {subjects.MAX_SUBJECT_LENGTH} characters", field="triggers.subject"
            )
        if not self.subject or any(not t or " " in t for t in tokens):
            raise SpecError(f"{self.subject!r} is not a valid NATS subject", field="triggers.subject")
        if self.subject.startswith("natsched.") or self.subject.startswith("$"):
            raise SpecError(
                f"{self.subject!r} is reserved for natsched or NATS itself", field="triggers.subject"
            )
        if not 1 <= self.max_bytes <= 1_048_576:
            raise SpecError("must be between 1 and 1048576", field="triggers.max_bytes")

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        return cls(
            subject=read_str(data["subject"], "triggers.subject"),
            max_bytes=read_int(data.get("max_bytes", 65536), "triggers.max_bytes"),
            match=_match(data.get("match", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "max_bytes": self.max_bytes, "match": dict(self.match)}

    def describe(self) -> str:
        return f"subject {self.subject}"


def _match(value: object, prefix: str = "") -> dict[str, MatchValue]:
    """``match`` as dotted paths; nested tables (TOML dotted keys) flatten."""
    if not isinstance(value, Mapping):
        raise SpecError(
            "must be a table of field = value (strings, numbers, booleans)", field="triggers.match"
        )
    flat: dict[str, MatchValue] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping):
            flat.update(_match(item, f"{path}."))
        elif isinstance(item, MatchValue):
            flat[path] = item
        else:
            raise SpecError(
                f"{path}: only strings, numbers and booleans can be matched", field="triggers.match"
            )
    return flat
