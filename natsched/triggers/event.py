"""Event triggers (``after``): upstream jobs completed. Followed by the master (``master/chains.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from natsched import subjects
from natsched.errors import SpecError
from natsched.parsing import check_tokens, parse_duration, read_bool, read_int, read_str, read_str_list
from natsched.triggers.base import Trigger
from natsched.vocab import RunState, RunTrigger

EventCondition = Literal["succeeded", "failed", "completed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class EventTrigger(Trigger):
    """Fire when upstream jobs (``<group>.<job>`` keys) complete with ``on``.

    ``wait = "all"``: fire once every upstream of the same chain run has completed as
    asked, failing the chain after ``timeout`` seconds. ``agents``: only completions on
    these agents count. ``per_agent``: a slave upstream triggers once per agent's run
    instead of once when all its targets are done.
    """

    kind = RunTrigger.EVENT
    key = "after"
    fields = frozenset({"after", "on", "exit_codes", "agents", "wait", "timeout", "per_agent"})
    example = {
        "after": ["g.extract", "g.load"],
        "on": "completed",
        "exit_codes": [0, 3],
        "agents": ["db1"],
        "wait": "all",
        "timeout": "2h",
        "per_agent": True,
    }

    after: tuple[str, ...]
    on: EventCondition = "succeeded"
    exit_codes: tuple[int, ...] = ()
    agents: tuple[str, ...] = ()
    wait: Literal["all", "any"] = "any"
    timeout: float = 3600.0
    per_agent: bool = False

    def __post_init__(self) -> None:
        if not self.after:
            raise SpecError("names no upstream job", field="triggers.after")
        for key in self.after:
            try:
                subjects.split_job_key(key)
            except ValueError as exc:
                raise SpecError(str(exc), field="triggers.after") from None
        if len(set(self.after)) != len(self.after):
            raise SpecError("names the same upstream job twice", field="triggers.after")
        if self.on not in ("succeeded", "failed", "completed"):
            raise SpecError(f"{self.on!r} is not one of succeeded, failed, completed", field="triggers.on")
        if self.wait not in ("all", "any"):
            raise SpecError(f"{self.wait!r} is not 'all' or 'any'", field="triggers.wait")
        if self.on == "succeeded" and self.exit_codes and 0 not in self.exit_codes:
            raise SpecError(
                f"on = 'succeeded' means exit code 0, so exit codes {list(self.exit_codes)} can never fire",
                field="triggers.exit_codes",
            )
        if self.timeout <= 0:
            raise SpecError("must be positive", field="triggers.timeout")
        check_tokens("triggers.agents", self.agents)

    def accepts(self, state: RunState, exit_code: int | None, agent: str) -> bool:
        """Does an upstream completion (final ``state``) satisfy this trigger's condition?"""
        if self.agents and agent not in self.agents:
            return False
        if self.exit_codes:
            return exit_code is not None and exit_code in self.exit_codes
        if self.on == "succeeded":
            return state is RunState.SUCCEEDED
        if self.on == "failed":
            return state.failed
        return state.completed

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        codes = data.get("exit_codes", [])
        if not isinstance(codes, list | tuple):
            raise SpecError("must be a list of integers", field="triggers.exit_codes")
        return cls(
            # A bare name is a job of the same group.
            after=tuple(
                k if "." in k else f"{group}.{k}" for k in read_str_list(data["after"], "triggers.after")
            ),
            on=read_str(data.get("on", "succeeded"), "triggers.on"),  # type: ignore[arg-type]
            exit_codes=tuple(read_int(c, "triggers.exit_codes") for c in codes),
            agents=read_str_list(data.get("agents", []), "triggers.agents"),
            wait=read_str(data.get("wait", "any"), "triggers.wait"),  # type: ignore[arg-type]
            timeout=parse_duration(data.get("timeout", 3600.0), "triggers.timeout"),
            per_agent=read_bool(data.get("per_agent", False), "triggers.per_agent"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "after": list(self.after),
            "on": self.on,
            "exit_codes": list(self.exit_codes),
            "agents": list(self.agents),
            "wait": self.wait,
            "timeout": self.timeout,
            "per_agent": self.per_agent,
        }

    def describe(self) -> str:
        return f"after {','.join(self.after)} {self.on}"
