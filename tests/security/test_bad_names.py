"""One bad KV entry or one over-long name never takes a service down (issue 15, item 8).

A key whose value names another job used to crash every master (also on restart); a name
of ~4-5 KB ended up in a subject over nats-server's 4 KB control line, the server closed
the connection and the master stayed up, disconnected for good.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.client import Client

from agent.config import AgentConfig
from agent.outbox import _SCHEMA as outbox_schema
from natsched import codec, subjects
from natsched.calendars import Holds
from natsched.embedded import EmbeddedServer
from natsched.errors import CodecError, ConfigError, SpecError
from natsched.jobspec import parse_job
from natsched.master.service import MasterService
from natsched.models import Heartbeat
from natsched.vocab import RunTrigger
from tests.conftest import AgentFactory, Process, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs

BIN = Path(sys.executable).parent
HUGE = "x" * 4500  # with the subject around it, over the server's 4 KB control line


async def answers(nc: Client) -> bool:
    try:
        return bool((await api(nc, subjects.API_PING, {}, timeout=3))["ok"])
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False


def slave_job(group: str, name: str) -> bytes:
    spec = parse_job(
        job(name, group=group, mode="slave", targets={"agents": ["nobody"]}, triggers=[{"every": "1h"}])
    )
    return codec.encode_job(spec)


async def test_a_key_holding_another_jobs_definition_is_skipped(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process], nc: Client
) -> None:
    jobs = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    await jobs.put("poison.mm2", slave_job("sec", "zzz"))  # the key says poison.mm2, the value sec.zzz
    await jobs.put("sec.zzz", slave_job("sec", "zzz"))
    await asyncio.sleep(1.0)  # the master's watchers take both in
    assert master_process.popen.poll() is None, master_process.output()[-2000:]
    assert await answers(nc)
    listed = await api(nc, subjects.API_JOBS_LIST, {})
    assert [row["key"] for row in listed["jobs"]] == ["sec.zzz"], "listed once, under its own key"
    assert len(listed["invalid"]) == 1 and listed["invalid"][0].startswith("poison.mm2")
    master_process.terminate()
    again = spawn("natsched", "master", url=nats_server.url, log_name="master-2.log")
    await eventually(lambda: answers(nc), 15, "the restarted master answers")  # no crash loop
    await asyncio.sleep(0.5)
    assert again.popen.poll() is None and await answers(nc)
    warnings = [line for line in again.output().splitlines() if "poison.mm2" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings


OVERLONG: dict[str, tuple[str, dict[str, Any]]] = {
    "apply-job-name": (subjects.API_APPLY, {"content": toml_jobs(job(HUGE), group="g")}),
    "apply-tag": (subjects.API_APPLY, {"content": toml_jobs(job("j", targets={"tags": [HUGE]}), group="g")}),
    "pause-agent": (subjects.API_PAUSE, {"agent": HUGE}),
    "pause-job": (subjects.API_PAUSE, {"job": f"g.{HUGE}"}),
    "list-agent": (subjects.API_JOBS_LIST, {"agent": HUGE}),
    "get-job": (subjects.API_JOBS_GET, {"job": f"g.{HUGE}"}),
    "calendar": (subjects.API_CALENDARS_SET, {"calendar": {"name": HUGE, "weekdays": ["sat"]}}),
    "secret": (subjects.API_SECRETS_SET, {"name": HUGE, "value": "v"}),
    "trigger-key": (f"{subjects.TRIGGER_PREFIX}.g.{'y' * 3900}", {}),
    "trigger-bare": (f"{subjects.TRIGGER_PREFIX}.{'y' * 3900}", {}),
}


async def test_an_overlong_name_is_refused_in_one_line_and_the_master_stays_connected(
    master_process: Process, nc: Client
) -> None:
    for attack, (subject, body) in OVERLONG.items():
        reply = await api(nc, subject, body)
        assert reply["ok"] is False, attack
        error = reply["error"]
        assert "\n" not in error and len(error) < 500, (attack, error[:300])
        assert "x" * 100 not in error, f"{attack}: the error does not echo the whole name"
        await asyncio.sleep(0.1)
        assert await answers(nc), (attack, master_process.output()[-2000:])
    assert "maximum control line" not in master_process.output()
    jobs = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    with pytest.raises(nats.js.errors.NoKeysError):
        await jobs.keys()


def test_limits_are_documented_and_apply_to_agent_config_and_job_files() -> None:
    limit = subjects.MAX_NAME_LENGTH
    with pytest.raises(ConfigError, match=f"1 to {limit}"):
        AgentConfig(name="a" * (limit + 1))
    AgentConfig(name="a" * limit)
    with pytest.raises(ValueError, match=f"1 to {limit}"):
        parse_job(job("j" * (limit + 1), group="g"))
    with pytest.raises(ValueError, match="longer than"):
        parse_job(job("j", group="g", triggers=[{"subject": "a." * 200}]))


def test_a_heartbeat_or_pause_of_the_wrong_shape_is_refused_not_trusted() -> None:
    real = Heartbeat(
        agent="a1", version="1", protocol=1, sent_at=1.0, started_at=1.0, load1=0.1,
        cpu_percent=1.0, memory_percent=1.0, running=0, max_concurrency=4, pools=("p",),
    )  # fmt: skip
    assert codec.decode_heartbeat(codec.encode_heartbeat(real), "a1") == real
    with pytest.raises(CodecError, match="names agent"):
        codec.decode_heartbeat(codec.encode_heartbeat(real), "a2")  # a1's heartbeat under a2's key
    for field, wrong in (("agent", 5), ("running", "x"), ("load1", float("nan")), ("pools", ["a b"])):
        forged = codec.pack({**msgpack.unpackb(codec.encode_heartbeat(real)), field: wrong})
        with pytest.raises(CodecError, match=field):
            codec.decode_heartbeat(forged, "a1")
    holds = Holds()
    holds.apply("pause.agent.a1", {"v": 1, "mode": "queue", "note": "n", "since": 1.0})
    assert holds.agent_hold("a1", RunTrigger.CRON)[0] == "queue"
    for garbage in ({"v": 1}, {"mode": "skip", "x": 1}, {"mode": "skip", "note": 5}, {"mode": ["skip"]}):
        with pytest.raises(SpecError):
            holds.apply("pause.agent.a2", garbage)
    assert holds.agent_hold("a2", RunTrigger.CRON) == ("", "")


async def test_a_poisoned_event_left_in_the_outbox_is_dropped_not_replayed(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """An older agent stored an event under a ~5 KB subject; replaying it after the upgrade
    would make the server close the connection, at every restart."""
    state_dir = tmp_path / "agent-o1"
    state_dir.mkdir()
    with sqlite3.connect(state_dir / "agent-o1.sqlite") as db:
        db.executescript(outbox_schema)
        db.execute(
            "INSERT INTO outbox (subject, msg_id, payload) VALUES (?, ?, ?)",
            (f"natsched.event.o1.g.{HUGE}.started", f"{HUGE}.started", b"{}"),
        )
    agent = await start_agent("o1", state_dir=state_dir)
    assert (await apply(nc, toml_jobs(job("after", mode="slave", targets={"agents": ["o1"]}), group="g")))[
        "ok"
    ]
    reply = json.loads((await nc.request(f"{subjects.TRIGGER_PREFIX}.g.after", b"{}", timeout=10)).data)
    assert reply["ok"], reply

    async def published() -> bool:
        return any(e["run_id"] == reply["runs"][0]["run_id"] for e in await stream_events(nc))

    await eventually(published, 10, "the new run's events reach the stream past the poisoned one")
    assert agent.outbox is not None and agent.outbox.depth == 0
    assert agent.nc is not None and agent.nc.is_connected


def test_the_cli_refuses_an_overlong_name_at_once_in_one_line(nats_server: EmbeddedServer) -> None:
    """Sent as is, ``natsched run`` waited 30 s for a reply the server never let through, and
    ``sync-report`` printed a traceback."""
    for args in (["run", f"g.{HUGE}"], ["sync-report", HUGE]):
        done = subprocess.run(
            [str(BIN / "natsched"), *args, "--server", nats_server.url],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 1 and "Traceback" not in out, out[-1000:]
        assert len(out.strip().splitlines()) == 1 and "1 to 64" in out, out[-1000:]
