"""File triggers (``watch``): a file in a directory became stable. Watched by agents (watchdog)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self, get_args

from natsched.errors import SpecError
from natsched.parsing import parse_duration, read_bool, read_str, read_str_list
from natsched.triggers.base import Trigger
from natsched.vocab import RunTrigger

FileEvent = Literal["created", "modified", "moved"]
FILE_EVENTS: tuple[FileEvent, ...] = get_args(FileEvent)


@dataclass(frozen=True, kw_only=True, slots=True)
class FileTrigger(Trigger):
    """Fire once per file matching ``patterns`` in ``watch`` that became stable."""

    kind = RunTrigger.FILE
    key = "watch"
    fields = frozenset({"watch", "patterns", "events", "settle", "recursive"})
    example = {
        "watch": "/srv/in",
        "patterns": ["*.csv"],
        "events": ["created"],
        "settle": "5s",
        "recursive": True,
    }

    watch: str
    patterns: tuple[str, ...] = ("*",)
    events: tuple[FileEvent, ...] = FILE_EVENTS
    settle: float = 2.0
    recursive: bool = False

    def __post_init__(self) -> None:
        if not self.watch.startswith("/"):
            raise SpecError(f"{self.watch!r} must be an absolute directory path", field="triggers.watch")
        if not self.patterns:
            raise SpecError("needs at least one glob pattern", field="triggers.patterns")
        for event in self.events:
            if event not in FILE_EVENTS:
                raise SpecError(f"unknown file event {event!r}", field="triggers.events")
        if self.settle < 0:
            raise SpecError("must not be negative", field="triggers.settle")

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        events = read_str_list(data.get("events", list(FILE_EVENTS)), "triggers.events")
        return cls(
            watch=read_str(data["watch"], "triggers.watch"),
            patterns=read_str_list(data.get("patterns", ["*"]), "triggers.patterns"),
            events=events,  # type: ignore[arg-type]  # checked in __post_init__
            settle=parse_duration(data.get("settle", 2.0), "triggers.settle"),
            recursive=read_bool(data.get("recursive", False), "triggers.recursive"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "watch": self.watch,
            "patterns": list(self.patterns),
            "events": list(self.events),
            "settle": self.settle,
            "recursive": self.recursive,
        }

    def describe(self) -> str:
        return f"files {self.watch}/{','.join(self.patterns)}"
