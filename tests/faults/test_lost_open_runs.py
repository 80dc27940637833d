"""A lost agent's open runs all end: queued ones as well as started ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import seen_by
from tests.helpers import apply, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults


async def test_a_queued_run_of_a_lost_agent_is_closed(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    async with MasterService(conn, unresponsive_after=2.0) as master:
        victim = spawn(
            "natsched-agent", "--name", "victim", "--state-dir", str(tmp_path / "victim"),
            url=nats_server.url, env={"NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5"},
        )  # fmt: skip

        await seen_by(master, "victim", timeout=15)
        await apply(
            nc,
            toml_jobs(
                job(
                    "slow",
                    mode="slave",
                    targets={"agents": ["victim"]},
                    command=["sleep", "5"],
                    overlap="queue",
                ),
                group="lq",
            ),
        )
        runs = []
        for _ in range(2):
            reply = json.loads((await nc.request("natsched.trigger.lq.slow", b"{}", timeout=10)).data)
            runs.append(reply["runs"][0])
        assert [r["state"] for r in runs] == ["started", "queued"], runs

        async def latest() -> dict[str, str]:
            states: dict[str, str] = {}
            for event in await stream_events(nc):
                if event["job"] == "lq.slow" and states.get(event["run_id"]) not in ("lost", "succeeded"):
                    states[event["run_id"]] = event["state"]
            return states

        async def both_recorded() -> bool:
            return set((await latest()).values()) == {"started", "queued"}

        await eventually(both_recorded, 10, "the started and the queued run on record")
        victim.kill()  # kill -9: nobody will ever start the queued run

        async def both_lost() -> bool:
            return set((await latest()).values()) == {"lost"}

        await eventually(both_lost, 15, "both runs (the queued one too) closed as lost")
        assert set(await latest()) == {r["run_id"] for r in runs}
