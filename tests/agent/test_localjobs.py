"""Agent-local jobs (``jobs_dir``) on a real server: outages, resyncs, strict and easy groups."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, toml_jobs


def _witness_job(name: str, witness: Path, word: str, **fields: Any) -> dict[str, Any]:
    script = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT {word}" >> {witness}'
    return job(name, command=script, shell=True, triggers=[{"every": "1s"}], **fields)


def _lines(witness: Path, word: str | None = None) -> list[str]:
    if not witness.exists():
        return []
    return [line for line in witness.read_text().splitlines() if word is None or line.endswith(f" {word}")]


async def _grows(witness: Path, word: str, timeout: float = 10, by: int = 2) -> None:
    start = len(_lines(witness, word))

    async def grown() -> bool:
        return len(_lines(witness, word)) >= start + by

    await eventually(grown, timeout, f"{word} runs in {witness}")


async def _local_report(nc: Client, agent: str) -> dict[str, Any]:
    msg = await nc.request(subjects.agent_sync_subject(agent), b"{}", timeout=5)
    report: dict[str, Any] = json.loads(msg.data)["local"]
    return report


async def test_local_jobs_run_through_master_and_nats_outages_and_a_full_resync(
    nats_server: EmbeddedServer, conn: ConnectionSettings, start_agent: AgentFactory, tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs.d"
    jobs_dir.mkdir()
    witness = tmp_path / "witness"
    (jobs_dir / "mine.toml").write_text(toml_jobs(_witness_job("tick", witness, "local"), group="own"))
    async with MasterService(conn):
        agent = await start_agent("l1", jobs_dir=jobs_dir, local_scan_interval=0.2)
        await _grows(witness, "local")
        assert agent.nc is not None
        report = await _local_report(agent.nc, "l1")
        assert [(j["key"], j["state"]) for j in report["jobs"]] == [("own.tick", "active")]
        assert report["jobs"][0]["file"] == str(jobs_dir / "mine.toml")
    await _grows(witness, "local")  # no master

    nats_server.stop()
    try:
        await _grows(witness, "local")  # no NATS
    finally:
        nats_server.start()
    async with MasterService(conn) as master:
        await agent.synced(15)
        # A recreated jobs bucket: the agent resyncs fully; its local job is not the bucket's to drop.
        js = master.nc.jetstream() if master.nc else None
        assert js is not None
        resyncs = agent.sync.full_resyncs if agent.sync else 0
        await js.delete_stream(subjects.kv_stream(subjects.JOBS_BUCKET))
    async with MasterService(conn):

        async def resynced() -> bool:
            return agent.sync is not None and agent.sync.full_resyncs > resyncs

        await eventually(resynced, 15, "a full resync")
        await _grows(witness, "local")
    assert all(line.split()[1] == "l1" for line in _lines(witness))
    run_ids = [line.split()[0] for line in _lines(witness)]
    assert len(run_ids) == len(set(run_ids))


async def test_strict_refuses_a_local_job_easy_keeps_it_and_the_newer_definition_wins(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs.d"
    jobs_dir.mkdir()
    witness = tmp_path / "witness"
    local_file = jobs_dir / "mine.toml"
    local_file.write_text(toml_jobs(_witness_job("x", witness, "local"), group="g"))
    await start_agent("e1", jobs_dir=jobs_dir, local_scan_interval=0.2)
    await _grows(witness, "local")  # easy by default: the local job runs

    reply = await api(nc, subjects.API_SETTINGS_SET, {"group": "g", "settings": {"replication": "strict"}})
    assert reply["ok"], reply

    async def refused() -> bool:
        jobs = (await _local_report(nc, "e1"))["jobs"]
        return [j["state"] for j in jobs] == ["refused"] and "strict" in jobs[0]["reason"]

    await eventually(refused, 10, "the local job refused")
    await asyncio.sleep(1.5)  # a run that was starting may still land
    stopped_at = len(_lines(witness, "local"))
    await asyncio.sleep(2.5)
    assert len(_lines(witness, "local")) == stopped_at, "a strict group must not run the local job"

    # Easy again: the local job is back. Then the master writes g.x after the file was modified:
    # the master's definition runs; the file modified later: the local one runs again.
    assert (await api(nc, subjects.API_SETTINGS_SET, {"group": "g", "settings": {"replication": "easy"}}))[
        "ok"
    ]
    await _grows(witness, "local")
    targets = {"agents": ["e1"]}
    assert (await apply(nc, toml_jobs(_witness_job("x", witness, "master", targets=targets), group="g")))[
        "ok"
    ]
    await _grows(witness, "master")
    jobs = (await _local_report(nc, "e1"))["jobs"]
    assert jobs[0]["state"] == "overridden"
    local_file.write_text(local_file.read_text() + "\n")  # modified now: newer than the master's
    await _grows(witness, "local")
    assert (await _local_report(nc, "e1"))["jobs"][0]["state"] == "active"
