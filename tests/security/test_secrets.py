"""Secrets: stored encrypted, resolved on the agent, masked in events and logs, never echoed."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from natsched import subjects
from natsched.master.service import MasterService
from natsched.secrets import generate_key_file, load_key
from natsched.settings import ConnectionSettings
from natsched.subjects import API_SECRETS_LIST, API_SECRETS_SET, SECRETS_BUCKET
from natsched.vocab import RunState
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs

VALUE = "hunter2-s3cr3t"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.key"
    generate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    return path


async def log_text(nc: Client, run_id: str, agent: str) -> str:
    chunks: list[bytes] = []
    sub = await nc.jetstream().subscribe(
        subjects.log_subject(agent, run_id),
        stream=subjects.LOGS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                chunks.append((await sub.next_msg(timeout=1)).data)
            except Exception:  # noqa: BLE001 - nothing more
                break
    finally:
        await sub.unsubscribe()
    return b"".join(chunks).decode()


async def finals(nc: Client, key: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key and not RunState(e["state"]).open]


async def test_a_secret_is_used_by_the_run_and_masked_everywhere(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    key_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with MasterService(conn, secret_key=load_key(key_file)):
        await start_agent("s1", secret_key_file=key_file)
        reply = await api(nc, API_SECRETS_SET, {"name": "db_pass", "value": VALUE})
        assert reply["ok"] and VALUE not in json.dumps(reply)
        stored = await (await nc.jetstream().key_value(SECRETS_BUCKET)).get("db_pass")
        assert VALUE.encode() not in (stored.value or b""), "the bucket holds ciphertext only"
        assert (await api(nc, API_SECRETS_LIST, {}))["secrets"] == ["db_pass"]
        # The digest proves the process got the real value (a secret never goes in argv).
        echo = ["sh", "-c", 'echo "env=$DB_PASS"; printf %s "$DB_PASS" | sha256sum']
        await apply(
            nc,
            toml_jobs(
                job(
                    "use",
                    mode="slave",
                    targets={"agents": ["s1"]},
                    command=echo,
                    env={"DB_PASS": "${secret:db_pass}"},
                ),
                job("missing", mode="slave", targets={"agents": ["s1"]}, env={"X": "${secret:nope}"}),
                group="sec",
            ),
        )
        run = json.loads((await nc.request("natsched.trigger.sec.use", b"{}", timeout=10)).data)["runs"][0]
        await eventually(lambda: _has(nc, "sec.use"), 10, "the run ended")
        [event] = await finals(nc, "sec.use")
        digest = hashlib.sha256(VALUE.encode()).hexdigest()
        assert event["state"] == "succeeded"
        assert event["output_tail"] == f"env=***\n{digest}  -\n", "the process got the real value"
        log = await log_text(nc, run["run_id"], "s1")
        assert log == f"env=***\n{digest}  -\n"
        raw_events = json.dumps(await stream_events(nc))
        assert VALUE not in raw_events and VALUE not in caplog.text

        await nc.request("natsched.trigger.sec.missing", b"{}", timeout=10)
        await eventually(lambda: _has(nc, "sec.missing"), 10, "the run failed")
        [failed] = await finals(nc, "sec.missing")
        assert (
            failed["state"] == "failed"
            and failed["reason"] == "secret nope does not exist (natsched secrets set nope)"
        )


async def test_without_the_key_a_run_fails_clearly_and_a_master_refuses_to_store(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("s2")
    reply = await api(nc, API_SECRETS_SET, {"name": "x", "value": VALUE})
    assert reply["ok"] is False and "no secret key" in reply["error"]
    await apply(
        nc,
        toml_jobs(job("k", mode="slave", targets={"agents": ["s2"]}, env={"X": "${secret:x}"}), group="nk"),
    )
    await nc.request("natsched.trigger.nk.k", b"{}", timeout=10)
    await eventually(lambda: _has(nc, "nk.k"), 10, "the run failed")
    [failed] = await finals(nc, "nk.k")
    assert failed["state"] == "failed" and "this agent has no secret key" in failed["reason"]


async def test_a_trigger_cannot_pull_a_secret_into_its_env(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, key_file: Path
) -> None:
    async with MasterService(conn, secret_key=load_key(key_file)):
        await start_agent("s3", secret_key_file=key_file)
        await api(nc, API_SECRETS_SET, {"name": "db_pass", "value": VALUE})
        await apply(
            nc,
            toml_jobs(
                job(
                    "show",
                    mode="slave",
                    targets={"agents": ["s3"]},
                    command=["sh", "-c", "echo $X"],
                    trigger={"env": ["X"]},
                ),
                group="tr",
            ),
        )
        body = json.dumps({"env": {"X": "${secret:db_pass}"}}).encode()
        await nc.request("natsched.trigger.tr.show", body, timeout=10)
        await eventually(lambda: _has(nc, "tr.show"), 10, "the run ended")
        [event] = await finals(nc, "tr.show")
        assert event["output_tail"] == "${secret:db_pass}\n", "passed as it is, not resolved"


async def _has(nc: Client, key: str) -> bool:
    await asyncio.sleep(0)
    return bool(await finals(nc, key))
