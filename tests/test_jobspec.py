"""Job definitions: validation names the field; the canonical mapping round-trips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from natsched import codec
from natsched.errors import CodecError, JobFileError, SpecError, VersionError
from natsched.jobfile import parse_job_document
from natsched.jobspec import job_to_dict, parse_duration, parse_job
from natsched.models import AgentIdentity, Mode, Targets
from natsched.triggers.cron import CronTrigger
from natsched.triggers.interval import IntervalTrigger


def _job(**fields: Any) -> dict[str, Any]:
    return {"name": "j", "group": "g", "command": ["true"], "targets": {"agents": ["*"]}, **fields}


FULL = _job(
    command="tar czf /backup/db.tgz /var/lib/db && sync",
    shell=True,
    mode="load-balance",
    targets={"pools": ["backup"], "tags": ["db"]},
    triggers=[
        {"cron": "0 30 2 * * 1-5", "timezone": "Europe/Berlin"},
        {"every": "90s", "jitter": 5},
        {"at": "2026-12-24T18:00:00+01:00"},
        {"after": ["g.other"], "on": "failed"},
        {"subject": "orders.created"},
    ],
    timeout="1h",
    retries={"attempts": 3, "backoff": "10s"},
    overlap="forbid",
    misfire="run-all",
    misfire_cap=5,
    balance="load",
    env={"A": "1", "B": "${A}-x"},
    cwd="/tmp",
    user="nobody",
    enabled=False,
    description="everything",
    trigger={"env": ["TARGET"], "args": True},
    output_limit="16MiB",
)


def test_full_spec_round_trips_through_the_wire() -> None:
    spec = parse_job(FULL)
    assert spec.mode is Mode.LOAD_BALANCE and spec.timeout == 3600 and spec.retries.attempts == 3
    assert isinstance(spec.triggers[0], CronTrigger) and isinstance(spec.triggers[1], IntervalTrigger)
    assert spec.output_limit == 16 * 1024**2
    assert codec.decode_job(codec.encode_job(spec), spec.key) == spec
    assert parse_job(job_to_dict(spec)) == spec


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "has.dot"}, "name"),
        ({"command": []}, "command"),
        ({"command": "echo hi"}, "command"),
        ({"mode": "sometimes"}, "mode"),
        ({"targets": {}}, "targets"),
        ({"targets": {"hosts": ["a"]}}, "targets"),
        ({"triggers": [{"cron": "61 * * * *"}]}, "triggers.cron"),
        ({"triggers": [{"cron": "* * * * *", "timezone": "Mars/Olympus"}]}, "triggers.timezone"),
        ({"triggers": [{"every": "fast"}]}, "triggers.every"),
        ({"triggers": [{"at": "2026-01-01T00:00:00"}]}, "triggers.at"),
        ({"triggers": [{"cron": "* * * * *", "every": 5}]}, "triggers"),
        ({"triggers": [{"watch": "relative/dir"}]}, "triggers.watch"),
        ({"triggers": [{"watch": "/in"}], "mode": "slave"}, "triggers.watch"),
        ({"triggers": [{"after": ["not a job"]}]}, "triggers.after"),
        ({"triggers": [{"subject": "natsched.trigger.x"}]}, "triggers.subject"),
        ({"mode": "load-balance"}, "targets.pools"),
        ({"timeout": -1}, "timeout"),
        ({"retries": {"attempts": -1}}, "retries.attempts"),
        ({"cwd": "tmp"}, "cwd"),
        ({"enabled": "yes"}, "enabled"),
        ({"colour": "red"}, "colour"),
        ({"command": ["mysql", "-p${secret:db}"]}, "command"),
        ({"output_limit": "lots"}, "output_limit"),
        ({"output_limit": 100}, "output_limit"),
        ({"output_limit": "2GiB"}, "output_limit"),
        ({"trigger": {"env": ["BASH_ENV"]}}, "trigger.env"),
        ({"trigger": {"env": ["LD_PRELOAD"]}}, "trigger.env"),
        ({"trigger": {"env": ["NATSCHED_RUN_ID"]}}, "trigger.env"),
        ({"trigger": {"env": ["NOT-A-NAME"]}}, "trigger.env"),
        ({"trigger": {"args": "yes"}}, "trigger.args"),
        ({"trigger": {"command": True}}, "trigger"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_job(_job(**fields), source="f.toml")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"f.toml: job '{fields.get('name', 'j')}'")


def test_durations() -> None:
    assert parse_duration("1h30m", "t") == 5400
    assert parse_duration("250ms", "t") == 0.25
    assert parse_duration(7, "t") == 7.0
    with pytest.raises(SpecError):
        parse_duration("5 minutes", "t")


def test_file_with_defaults_duplicates_and_json() -> None:
    jobs = parse_job_document(
        'group = "ops"\n[[jobs]]\nname = "a"\ncommand = ["true"]\ntargets = { agents = ["*"] }\n',
        source="ops.toml",
    )
    assert [j.key for j in jobs.jobs] == ["ops.a"] and jobs.groups == {"ops"}
    as_json = parse_job_document(
        '{"jobs": [{"name": "b", "group": "x", "command": ["true"], "targets": {"tags": ["t"]}}]}',
        source="x.json",
    )
    assert as_json.jobs[0].key == "x.b"
    with pytest.raises(JobFileError) as caught:
        parse_job_document(
            'group = "g"\n[[jobs]]\nname = "a"\ncommand = ["x"]\ntargets = {agents=["*"]}\n'
            '[[jobs]]\nname = "a"\ncommand = ["y"]\ntargets = {agents=["*"]}\n',
            source="d.toml",
        )
    assert "defined twice" in str(caught.value)


def test_targets_match_by_name_tag_pool_and_all() -> None:
    db1 = AgentIdentity(name="db1", tags=frozenset({"db"}), pools=frozenset({"backup"}))
    assert Targets(agents=("*",)).matches(db1)
    assert Targets(agents=("db1",)).matches(db1)
    assert Targets(tags=("db",)).matches(db1)
    assert Targets(pools=("backup",)).matches(db1)
    assert not Targets(agents=("web1",), tags=("web",)).matches(db1)


def test_codec_rejects_garbage_and_other_versions() -> None:
    with pytest.raises(CodecError, match="not valid msgpack"):
        codec.unpack(b"\xc1", "x")
    with pytest.raises(VersionError, match="protocol v2"):
        codec.unpack(codec.pack({}).replace(b"\xa1v\x01", b"\xa1v\x02"), "x")
    with pytest.raises(VersionError, match="missing"):
        codec.unpack(b"\x80", "x")
    with pytest.raises(CodecError, match="expected a JSON object"):
        codec.from_json(b"[1]", "x")
    assert codec.from_json(b"  ", "x") == {}
    payload = codec.to_json({"at": datetime(2026, 1, 1, tzinfo=UTC)})
    assert b'"v":1' in payload
