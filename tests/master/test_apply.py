"""Applying job files through the master's API, on a real nats-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from natsched import codec, subjects
from natsched.jobspec import parse_job
from natsched.kvscan import scan
from natsched.master.service import MasterService
from natsched.models import JobSpec
from natsched.settings import ConnectionSettings
from tests.helpers import api, apply, job, toml_jobs


async def _bucket(nc: Client) -> dict[str, int]:
    return {k: v.revision for k, v in (await scan(nc.jetstream(), subjects.JOBS_BUCKET)).items()}


async def test_apply_creates_then_leaves_unchanged_jobs_alone(master: MasterService, nc: Client) -> None:
    content = toml_jobs(job("a"), job("b", triggers=[{"cron": "*/5 * * * * *"}]), group="g")
    first = await apply(nc, content)
    assert first["ok"] and sorted(first["created"]) == ["g.a", "g.b"]
    revisions = await _bucket(nc)

    second = await apply(nc, content)
    assert (
        second["created"] == [] and second["updated"] == [] and sorted(second["unchanged"]) == ["g.a", "g.b"]
    )
    assert await _bucket(nc) == revisions, "an unchanged apply must not write (no revision churn)"


async def test_update_and_default_keeps_jobs_missing_from_file(master: MasterService, nc: Client) -> None:
    await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
    result = await apply(nc, toml_jobs(job("a", command=["echo", "changed"]), group="g"))
    assert result["updated"] == ["g.a"] and result["deleted"] == []
    assert set(await _bucket(nc)) == {"g.a", "g.b"}


async def test_prune_deletes_only_in_the_files_groups(master: MasterService, nc: Client) -> None:
    await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
    await apply(nc, toml_jobs(job("other"), group="h"))
    result = await apply(nc, toml_jobs(job("a"), group="g"), prune=True)
    assert result["deleted"] == ["g.b"]
    assert set(await _bucket(nc)) == {"g.a", "h.other"}


async def test_dry_run_reports_the_diff_and_writes_nothing(master: MasterService, nc: Client) -> None:
    await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
    before = await _bucket(nc)
    result = await apply(
        nc, toml_jobs(job("a", command=["x"]), job("c"), group="g"), prune=True, dry_run=True
    )
    assert result["dry_run"] is True
    assert (result["created"], result["updated"], result["deleted"]) == (["g.c"], ["g.a"], ["g.b"])
    assert await _bucket(nc) == before


async def test_one_invalid_job_writes_nothing_and_every_error_is_named(
    master: MasterService, nc: Client
) -> None:
    content = toml_jobs(
        job("good"),
        job("badcron", triggers=[{"cron": "61 * * * *"}]),
        job("badmode", mode="sometimes"),
        group="g",
    )
    result = await apply(nc, content, source="jobs/prod.toml")
    assert result["ok"] is False
    assert "2 invalid" in result["error"]
    assert any("jobs/prod.toml" in e and "'badcron'" in e and "triggers.cron" in e for e in result["errors"])
    assert any("'badmode'" in e and "'mode'" in e for e in result["errors"])
    assert await _bucket(nc) == {}


async def test_malformed_documents_get_one_clear_error(master: MasterService, nc: Client) -> None:
    bad_toml = await apply(nc, "group = \n[[jobs]", source="broken.toml")
    assert bad_toml["ok"] is False and "broken.toml" in bad_toml["error"] and "TOML" in bad_toml["error"]
    shell_string = await apply(nc, toml_jobs(job("s", command="echo hi | wc"), group="g"))
    assert shell_string["ok"] is False and "shell = true" in shell_string["errors"][0]
    unknown_field = await apply(nc, toml_jobs(job("u", comand=["x"]), group="g"))
    assert "comand" in unknown_field["errors"][0]
    assert await _bucket(nc) == {}


async def test_garbage_on_api_subjects_gets_errors_and_master_stays_up(
    master: MasterService, nc: Client
) -> None:
    for subject, payload in [
        (subjects.API_APPLY, b"\xff\x00garbage"),
        (subjects.API_APPLY, b"[1, 2]"),
        (subjects.API_APPLY, b'{"content": 5}'),
        (subjects.API_JOBS_GET, b'{"job": "nope"}'),
        (subjects.API_JOBS_DELETE, b'{"jobs": "not-a-list"}'),
        ("natsched.api.nonsense", b"{}"),
        (subjects.API_APPLY, b'{"v": 99, "content": "x"}'),
    ]:
        reply = await api(nc, subject, payload)
        assert reply["ok"] is False and reply["error"], (subject, payload)
    assert (await api(nc, subjects.API_PING, {}))["ok"] is True


async def test_jobs_list_get_enable_disable_delete(master: MasterService, nc: Client) -> None:
    await apply(nc, toml_jobs(job("a", targets={"tags": ["db"]}), job("b"), group="g"))
    await apply(nc, toml_jobs(job("a"), group="h"))
    listed = await api(nc, subjects.API_JOBS_LIST, {"group": "g"})
    assert [j["key"] for j in listed["jobs"]] == ["g.a", "g.b"]
    by_agent = await api(nc, subjects.API_JOBS_LIST, {"agent": "web1"})
    assert [j["key"] for j in by_agent["jobs"]] == ["g.b", "h.a"]  # g.a wants tag db
    assert by_agent["agent_known"] is False

    ambiguous = await api(nc, subjects.API_JOBS_GET, {"job": "a"})
    assert ambiguous["ok"] is False and "ambiguous" in ambiguous["error"]
    shown = await api(nc, subjects.API_JOBS_GET, {"job": "b"})
    assert shown["key"] == "g.b" and shown["spec"]["command"] == ["true"]

    disabled = await api(nc, subjects.API_JOBS_DISABLE, {"jobs": ["g.b"]})
    assert disabled["changed"] == ["g.b"]
    assert (await api(nc, subjects.API_JOBS_GET, {"job": "g.b"}))["spec"]["enabled"] is False
    again = await api(nc, subjects.API_JOBS_DISABLE, {"jobs": ["g.b"]})
    assert again["unchanged"] == ["g.b"]
    await api(nc, subjects.API_JOBS_ENABLE, {"jobs": ["g.b"]})
    assert "enabled" not in (await api(nc, subjects.API_JOBS_GET, {"job": "g.b"}))["spec"]

    deleted = await api(nc, subjects.API_JOBS_DELETE, {"jobs": ["h.a", "b"]})
    assert deleted["deleted"] == ["h.a", "g.b"]
    assert set(await _bucket(nc)) == {"g.a"}
    missing = await api(nc, subjects.API_JOBS_DELETE, {"jobs": ["zzz"]})
    assert missing["ok"] is False and "zzz" in missing["error"]


async def test_apply_of_one_job_decodes_only_that_job(
    master: MasterService, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many jobs stored, an apply reads the master's index: it decodes nothing but the
    changed job (once: when the index takes in the write or when it is first read), and the
    reply already shows it."""
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    stored = 500
    for i in range(stored):
        spec = parse_job(
            {"name": f"j{i}", "group": "many", "command": ["true"], "targets": {"agents": ["*"]}}
        )
        await kv.put(spec.key, codec.encode_job(spec))
    assert len((await api(nc, subjects.API_JOBS_LIST, {"group": "many"}))["jobs"]) == stored
    decoded: list[str] = []
    decode = codec.decode_job

    def counting_decode(data: bytes, key: str) -> JobSpec:
        decoded.append(key)
        return decode(data, key)

    monkeypatch.setattr(codec, "decode_job", counting_decode)
    result = await apply(nc, toml_jobs(job("j7", command=["echo", "changed"]), group="many"))
    assert result["updated"] == ["many.j7"]
    assert decoded in ([], ["many.j7"])  # the index decodes a definition when first read
    shown = await api(nc, subjects.API_JOBS_GET, {"job": "many.j7"})
    assert shown["spec"]["command"] == ["echo", "changed"]
    assert decoded == ["many.j7"]


async def test_an_at_in_the_past_is_refused_unless_it_was_already_stored(
    master: MasterService, nc: Client
) -> None:
    """A one-shot time that has passed would be stored and never fire: refused, nothing written."""
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    result = await apply(nc, toml_jobs(job("late", triggers=[{"at": past}]), job("ok"), group="g"))
    assert not result["ok"]
    assert "job 'late': field 'triggers.at'" in result["error"] and "in the past" in result["error"]
    assert await _bucket(nc) == {}

    # A job stored when its time was still ahead (written here directly): re-applying its file,
    # or changing another field, is not refused.
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    stored = parse_job({**job("once", triggers=[{"at": past}]), "group": "g"}, source="test")
    await kv.put("g.once", codec.encode_job(stored))
    assert (await apply(nc, toml_jobs(job("once", triggers=[{"at": past}]), group="g")))["unchanged"] == [
        "g.once"
    ]
    changed = toml_jobs(job("once", command=["echo", "x"], triggers=[{"at": past}]), group="g")
    assert (await apply(nc, changed))["updated"] == ["g.once"]
    assert (await apply(nc, toml_jobs(job("soon", triggers=[{"at": future}]), group="g")))["ok"]


async def test_a_change_is_seen_by_the_next_request_on_any_master(
    conn: ConnectionSettings, nc: Client
) -> None:
    """Read-your-writes with two masters (each request goes to either): right after an apply's
    reply, a trigger or a jobs get answers from the new definition, never the previous one."""
    async with MasterService(conn), MasterService(conn):
        for i in range(12):
            enabled = i % 2 == 1
            spec = job("flip", mode="slave", enabled=enabled, targets={"agents": ["nobody"]})
            assert (await apply(nc, toml_jobs(spec, job(f"new{i}"), group="rw")))["ok"]
            reply = await api(nc, f"{subjects.TRIGGER_PREFIX}.rw.flip", {})
            assert ("is disabled" in reply.get("error", "")) is not enabled, (i, reply)
            shown = await api(nc, subjects.API_JOBS_GET, {"job": f"rw.new{i}"})
            assert shown["ok"] and shown["key"] == f"rw.new{i}", shown


async def test_dry_run_names_each_changed_field_of_an_updated_job(master: MasterService, nc: Client) -> None:
    await apply(
        nc, toml_jobs(job("a", timeout="1h", triggers=[{"cron": "0 2 * * *"}], env={"A": "1"}), group="g")
    )
    changed = toml_jobs(job("a", timeout="2h", triggers=[{"cron": "0 3 * * *"}], env={"B": "2"}), group="g")
    result = await apply(nc, changed, dry_run=True)
    assert result["updated"] == ["g.a"]
    assert result["changes"]["g.a"] == [
        'triggers[0].cron "0 2 * * *" -> "0 3 * * *"',
        "timeout 1h -> 2h",
        'env.B (none) -> "2"',
        'env.A "1" -> (none)',
    ]
