"""What every trigger kind provides; ``registry.py`` lists the kinds.

A kind is one module of this package holding a frozen dataclass that subclasses
:class:`Trigger` (or :class:`TimeTrigger` when it fires at computed instants), with its
job-file ``parse``, its ``to_dict`` (the canonical mapping, which ``parse`` reads back), its
``describe`` for listings and an ``example`` table. The abstract methods make a
half-written kind fail as soon as it is built, and ``tests/triggers/test_registry.py``
walks the registry with every example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Self

from natsched.vocab import RunTrigger


class Trigger(ABC):
    """One way a job fires."""

    __slots__ = ()

    kind: ClassVar[RunTrigger]
    """The kind as runs and events name it (an event's ``trigger``): ``cron``, ``file`` ..."""
    key: ClassVar[str]
    """The job-file field that says a trigger table is of this kind: ``cron``, ``every``, ``watch`` ..."""
    fields: ClassVar[frozenset[str]]
    """Every job-file field of this kind, ``key`` included; any other is an error."""
    example: ClassVar[Mapping[str, Any]]
    """A valid job-file table of this kind (with as many fields as it has)."""

    @classmethod
    @abstractmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        """The trigger from its job-file table (only ``fields`` in it); SpecError naming the field.

        ``group`` is the job's group, for names that a bare job name may abbreviate.
        """

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The canonical job-file table: ``parse`` of it gives an equal trigger."""

    @abstractmethod
    def describe(self) -> str:
        """A few words for listings (``natsched jobs list``): ``cron 0 2 * * * UTC``."""


class TimeTrigger(Trigger):
    """A trigger that fires at instants computed from the clock (no I/O, no sleeping).

    Both methods take aware datetimes in any zone and return aware UTC datetimes.
    """

    __slots__ = ()

    @abstractmethod
    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire instant strictly after ``after``; None if it never fires again."""

    @abstractmethod
    def previous_fires(self, at_or_before: datetime, count: int) -> list[datetime]:
        """The latest ``count`` fire instants at or before ``at_or_before``, newest first.

        Exactly the instants ``next_fire`` steps through, so a cursor can move either way; the
        work is bounded by ``count``, however long ago the last firing was.
        """
