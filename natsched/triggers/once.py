"""Once triggers (``at``): a single instant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from natsched.errors import SpecError
from natsched.parsing import parse_datetime
from natsched.triggers.base import TimeTrigger
from natsched.vocab import RunTrigger


def next_once_fire(at: datetime, after: datetime) -> datetime | None:
    """``at`` (in UTC) if it is strictly after ``after``; None once it has passed."""
    return at.astimezone(UTC) if at > after else None


def previous_once_fires(at: datetime, at_or_before: datetime, count: int) -> list[datetime]:
    """``[at]`` (in UTC) if it is at or before ``at_or_before`` and ``count`` allows one."""
    return [at.astimezone(UTC)] if at <= at_or_before and count > 0 else []


@dataclass(frozen=True, kw_only=True, slots=True)
class OnceTrigger(TimeTrigger):
    """Fire once, at ``at``."""

    kind = RunTrigger.ONCE
    key = "at"
    fields = frozenset({"at"})
    example = {"at": "2026-12-24T18:00:00+01:00"}

    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise SpecError("needs a time zone offset, e.g. 2026-01-01T09:00:00+01:00", field="triggers.at")

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        return cls(at=parse_datetime(data["at"], "triggers.at"))

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat()}

    def describe(self) -> str:
        return f"at {self.at.isoformat()}"

    def next_fire(self, after: datetime) -> datetime | None:
        return next_once_fire(self.at, after)

    def previous_fires(self, at_or_before: datetime, count: int) -> list[datetime]:
        return previous_once_fires(self.at, at_or_before, count)
