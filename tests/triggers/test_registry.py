"""The trigger registry: every kind parses, writes and reads back its job-file table; an
unregistered or half-written kind is refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

import pytest

from natsched import codec
from natsched.cli.jobs import _trigger_text
from natsched.errors import SpecError
from natsched.jobspec import job_to_dict, parse_job
from natsched.models import JobSpec, Targets
from natsched.triggers.base import TimeTrigger, Trigger
from natsched.triggers.registry import KINDS, parse_trigger, trigger_to_dict
from natsched.vocab import RunTrigger

EVERY_AGENT = Targets(agents=("*",))
BEFORE_EXAMPLES = datetime(2026, 6, 1, tzinfo=UTC)  # before the once example's instant


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_each_kind_round_trips_its_example_with_every_field(kind: type[Trigger]) -> None:
    assert kind.key in kind.fields
    assert set(kind.example) == kind.fields, "the example should set every field the kind takes"
    trigger = parse_trigger(dict(kind.example), "g")
    assert type(trigger) is kind
    written = trigger_to_dict(trigger)
    assert set(written) == kind.fields, "to_dict should write every field the example set"
    assert parse_trigger(written, "g") == trigger
    text = trigger.describe()
    assert text and "\n" not in text


def test_jobs_list_describes_each_kind_and_shows_an_unknown_table_as_it_is() -> None:
    for kind in KINDS:
        table = dict(kind.example)
        assert _trigger_text(table, "g") == parse_trigger(table, "g").describe()
    assert _trigger_text({"every": 90.0}, "g") == "every 90s"
    assert _trigger_text({"url": "https://h/x"}, "g") == '{"url": "https://h/x"}'  # not "subject None"


def test_kinds_have_distinct_names_and_keys() -> None:
    assert len({k.kind for k in KINDS}) == len(KINDS)
    assert len({k.key for k in KINDS}) == len(KINDS)
    for kind in KINDS:  # a table's fields tell its kind only if no field is another kind's key
        assert not (kind.fields - {kind.key}) & {other.key for other in KINDS}


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_a_bad_value_is_refused_naming_the_field(kind: type[Trigger]) -> None:
    with pytest.raises(SpecError) as caught:
        parse_trigger({kind.key: [{}]}, "g")
    assert caught.value.field == f"triggers.{kind.key}"
    another = next(k for k in KINDS if k is not kind)
    foreign = sorted(another.fields - kind.fields - {another.key})
    if foreign:  # a field of another kind is a mistake, not something to ignore
        with pytest.raises(SpecError) as caught:
            parse_trigger({**kind.example, foreign[0]: another.example[foreign[0]]}, "g")
        assert caught.value.field == f"triggers.{foreign[0]}"


def test_a_table_names_exactly_one_kind() -> None:
    for table in ({}, {"cron": "* * * * *", "every": 5}, {"timezone": "UTC"}):
        with pytest.raises(SpecError) as caught:
            parse_trigger(table, "g")
        assert caught.value.field == "triggers"
    with pytest.raises(SpecError, match="unknown key"):
        parse_trigger({"cron": "* * * * *", "colour": "red"}, "g")


def test_time_kinds_step_through_the_same_instants_both_ways() -> None:
    for kind in KINDS:
        trigger = parse_trigger(dict(kind.example), "g")
        if not isinstance(trigger, TimeTrigger):
            continue
        first = trigger.next_fire(BEFORE_EXAMPLES)
        assert first is not None and first > BEFORE_EXAMPLES and first.tzinfo is UTC, kind.kind
        assert trigger.previous_fires(first, 1) == [first], kind.kind


def test_a_job_with_every_kind_round_trips_through_file_and_wire() -> None:
    triggers = tuple(parse_trigger(dict(k.example), "g") for k in KINDS)
    spec = JobSpec(name="j", group="g", command=("true",), targets=EVERY_AGENT, triggers=triggers)
    assert parse_job(job_to_dict(spec)) == spec
    assert codec.decode_job(codec.encode_job(spec), spec.key) == spec


@dataclass(frozen=True, kw_only=True, slots=True)
class _Unregistered(Trigger):
    kind = RunTrigger.UNKNOWN  # a kind being added has no run trigger of its own yet
    key = "url"
    fields = frozenset({"url"})
    example = {"url": "https://example.com/hook"}

    url: str

    @classmethod
    def parse(cls, data: Mapping[str, Any], group: str) -> Self:
        return cls(url=data["url"])

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url}

    def describe(self) -> str:
        return f"webhook {self.url}"


def test_a_kind_missing_from_the_registry_is_an_error_everywhere() -> None:
    hook = _Unregistered(url="https://example.com/hook")
    with pytest.raises(SpecError) as caught:
        JobSpec(name="j", group="g", command=("true",), targets=EVERY_AGENT, triggers=(hook,))
    assert caught.value.field == "triggers"
    with pytest.raises(SpecError, match="not a registered trigger kind"):
        trigger_to_dict(hook)
    with pytest.raises(SpecError, match="unknown key"):
        parse_trigger({"url": "https://example.com/hook"}, "g")


def test_a_kind_without_parse_or_to_dict_cannot_be_built() -> None:
    @dataclass(frozen=True, kw_only=True, slots=True)
    class HalfWritten(Trigger):
        kind = RunTrigger.UNKNOWN
        key = "half"
        fields = frozenset({"half"})
        example = {"half": 1}

        @classmethod
        def parse(cls, data: Mapping[str, Any], group: str) -> Self:
            return cls()

    with pytest.raises(TypeError, match="to_dict"):
        HalfWritten.parse({"half": 1}, "g")
