"""Strict API input (issue 15, item 9): wrong types, unknown fields, NaN, NUL, deep nesting
and huge files are each refused in one line, change nothing and log no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, NoKeysError

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.api import AdminApi
from natsched.master.jobindex import JobIndex
from natsched.master.requests import FIELDS
from natsched.master.secrets_api import SecretsApi
from natsched.master.service import MasterService
from tests.helpers import api, apply, job, toml_jobs

BIN = Path(sys.executable).parent


async def job_keys(nc: Client) -> list[str]:
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    try:
        return sorted(await kv.keys())
    except NoKeysError:
        return []


def refused(reply: dict[str, Any], *words: str) -> str:
    assert reply["ok"] is False, reply
    error = str(reply["error"])
    assert "\n" not in error and len(error) < 400, error[:400]
    assert "internal error" not in error, error
    details = " ".join([error, *reply.get("errors", [])])
    for word in words:
        assert word in details, details
    return error


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


async def test_wrong_types_and_unknown_fields_are_refused_and_change_nothing(
    master: MasterService, nc: Client, no_tracebacks: None
) -> None:
    both = toml_jobs(job("a"), job("b"), group="g")
    assert (await apply(nc, both))["ok"]
    only_a = toml_jobs(job("a"), group="g")
    refused(
        await api(nc, subjects.API_APPLY, {"content": only_a, "prune": "false"}), "'prune'", "true or false"
    )
    assert await job_keys(nc) == ["g.a", "g.b"], "a string 'false' must not prune"
    new = toml_jobs(job("c"), group="g")
    refused(await api(nc, subjects.API_APPLY, {"content": new, "dryrun": True}), "dryrun", "dry_run")
    assert await job_keys(nc) == ["g.a", "g.b"], "a misspelt dry_run must not apply for real"
    refused(await api(nc, subjects.API_PAUSE, {"agent": 5}), "'agent'")
    refused(await api(nc, subjects.API_JOBS_DELETE, {"jobs": "g.a"}), "'jobs'")
    refused(await api(nc, subjects.API_JOBS_DISABLE, {"jobs": [1]}), "'jobs'")
    refused(await api(nc, subjects.API_JOBS_LIST, {"group": ["g"]}), "'group'")
    refused(await api(nc, subjects.API_RUNS_CANCEL, {"run_id": {"$gt": ""}}), "'run_id'")
    for field in ("dates", "weekdays", "windows"):
        refused(await api(nc, subjects.API_CALENDARS_SET, {"calendar": {"name": "c", field: 5}}), field)
    refused(await api(nc, subjects.API_RUNS_CANCEL, {"run_id": "f" * 60}), "not a natsched run id")
    settings = await nc.jetstream().key_value(subjects.SETTINGS_BUCKET)
    with pytest.raises(KeyNotFoundError):
        await settings.get("pause.agent.5")
    assert await job_keys(nc) == ["g.a", "g.b"]
    listed = await api(nc, subjects.API_JOBS_LIST, {})
    assert all(row["enabled"] for row in listed["jobs"])


async def test_nan_nul_and_deep_nesting_are_refused(
    master: MasterService, nc: Client, no_tracebacks: None
) -> None:
    nan_toml = (
        'group = "g"\n[[jobs]]\nname = "n"\ncommand = ["true"]\ntargets = { agents = ["*"] }\ntimeout = nan\n'
    )
    refused(await apply(nc, nan_toml), "'timeout'")
    inf_toml = nan_toml.replace("timeout = nan", "retries = { attempts = 1, backoff = inf }")
    refused(await apply(nc, inf_toml), "backoff")
    nan_json = b'{"content": "{\\"jobs\\": []}", "format": "json", "dry_run": NaN}'
    refused(await api(nc, subjects.API_APPLY, nan_json), "NaN")
    json_file = json.dumps({"group": "g", "jobs": [job("n", timeout=1e999)]})  # dumps writes Infinity
    refused(await api(nc, subjects.API_APPLY, {"content": json_file, "format": "json"}))
    for fields in ({"command": ["echo", "a\0b"]}, {"env": {"A": "x\0y"}}, {"cwd": "/tmp\0"}):
        refused(await apply(nc, toml_jobs(job("z", **fields), group="g")), "NUL")
    refused(await api(nc, subjects.API_PAUSE, {"agent": "a1", "note": "n\0"}), "NUL")
    deep = b'{"content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    refused(await api(nc, subjects.API_APPLY, deep), "nested")
    nested = b'{"calendar": {"name": "c", "x": ' + b"[" * 40 + b"]" * 40 + b"}}"
    refused(await api(nc, subjects.API_CALENDARS_SET, nested), "nested")
    # The same inside a job file (a string, so the request itself is fine): TOML and JSON.
    deep_files = {
        "toml": "a = " + "[" * 50_000 + "]" * 50_000,
        "json": '{"jobs": ' + "[" * 50_000 + "]" * 50_000 + "}",
    }
    for fmt, content in deep_files.items():
        refused(await api(nc, subjects.API_APPLY, {"content": content, "format": fmt}), "nested")
    match = "{a = " * 40 + "1" + " }" * 40
    deep_match = toml_jobs(job("m"), group="g") + f'triggers = [{{ subject = "x.y", match = {match} }}]\n'
    refused(await apply(nc, deep_match), "nested")
    huge_int = {"content": '{"jobs": [], "x": ' + "9" * 5000 + "}", "format": "json"}
    refused(await api(nc, subjects.API_APPLY, huge_int), "not valid JSON")
    assert await job_keys(nc) == []
    assert (await api(nc, subjects.API_PING, {}))["ok"]


async def test_trigger_body_with_nul_or_nan_is_refused_and_runs_nothing(
    master: MasterService, nc: Client, no_tracebacks: None
) -> None:
    slave = job("t", mode="slave", targets={"agents": ["nobody"]})
    assert (await apply(nc, toml_jobs(slave, group="g")))["ok"]
    cases = {
        b'{"correlation_id": "a\\u0000b"}': "NUL",
        b'{"args": ["\\u0000"]}': "NUL",
        b'{"args": [NaN]}': "NaN",
    }
    for body, why in cases.items():
        reply = json.loads((await nc.request(f"{subjects.TRIGGER_PREFIX}.g.t", body, timeout=5)).data)
        refused(reply, why)  # refused for what it is, before any dispatch


async def test_trigger_args_and_env_an_agent_would_refuse_are_refused_by_the_master(
    master: MasterService, nc: Client, no_tracebacks: None
) -> None:
    """A value no agent accepts (over 4096 characters, a 257-character name) is refused in the
    trigger's reply, naming the limit, before any dispatch: not sent on to be refused there."""
    slave = job("t", mode="slave", targets={"agents": ["nobody"]}, trigger={"args": True, "env": ["X"]})
    assert (await apply(nc, toml_jobs(slave, group="g")))["ok"]
    cases = [
        ({"args": ["a" * 4097]}, "4096"),
        ({"env": {"X": "v" * 4097}}, "4096"),
        ({"env": {"X" * 257: "v"}}, "256"),
    ]
    for body, limit in cases:
        reply = json.loads(
            (await nc.request(f"{subjects.TRIGGER_PREFIX}.g.t", json.dumps(body).encode(), timeout=5)).data
        )
        refused(reply, limit)
    within = json.dumps({"args": ["a" * 4096], "env": {"X": "v" * 4096}}).encode()
    reply = json.loads((await nc.request(f"{subjects.TRIGGER_PREFIX}.g.t", within, timeout=5)).data)
    assert "4096" not in refused(reply), reply  # within the limits: on to dispatch (no such agent)


async def test_unknown_api_subject_gets_the_documented_error_reply(master: MasterService, nc: Client) -> None:
    for subject in ("natsched.api.nope", "natsched.api.jobs.nope.deeper"):
        refused(await api(nc, subject, {}), "unknown API subject")


async def test_every_api_handler_has_a_request_schema(master: MasterService, nc: Client) -> None:
    js = nc.jetstream()
    admin = AdminApi(
        js=js,
        jobs=await js.key_value(subjects.JOBS_BUCKET),
        agents=await js.key_value(subjects.AGENTS_BUCKET),
        master_id="schema-check",
        index=JobIndex(await js.key_value(subjects.JOBS_BUCKET)),
        settings=await js.key_value(subjects.SETTINGS_BUCKET),
        secrets=SecretsApi(await js.key_value(subjects.SECRETS_BUCKET), None),
    )
    assert set(admin.handlers) == set(FIELDS)


async def test_a_huge_job_file_is_a_one_line_error(
    nats_server: EmbeddedServer, master: MasterService, nc: Client, tmp_path: Path
) -> None:
    big = tmp_path / "big.toml"
    line = toml_jobs(job("j", description="x" * 1000), group="g")
    big.write_text(line + "".join(line.split("\n", 1)[1].replace('"j"', f'"j{i}"') for i in range(9000)))
    assert big.stat().st_size > 9_000_000
    process = await asyncio.create_subprocess_exec(
        str(BIN / "natsched"),
        "apply",
        "-f",
        str(big),
        "--server",
        nats_server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 1, text[-2000:]
    assert "Traceback" not in text and "max_payload" in text, text[-2000:]
    assert len(text.strip().splitlines()) == 1, text[-2000:]
    assert await job_keys(nc) == []


async def test_a_reply_over_max_payload_is_an_error_reply_not_silence(
    master: MasterService, nc: Client
) -> None:
    # "é" is 2 bytes in the request (raw UTF-8) but 6 in the master's JSON reply (\u00e9):
    # the stored job fits, the full definition in a jobs.get reply does not.
    big = toml_jobs(job("big"), group="g") + f'description = "{"é" * 1_500_000}"\n'
    body = json.dumps({"content": big}, ensure_ascii=False).encode()
    assert len(body) < nc.max_payload
    reply = await api(nc, subjects.API_APPLY, body, timeout=30)
    assert reply["ok"], reply
    refused(await api(nc, subjects.API_JOBS_GET, {"job": "g.big"}, timeout=30), "max_payload")
    assert (await api(nc, subjects.API_PING, {}))["ok"]
