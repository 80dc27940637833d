"""The agent's ``max_queued`` setting bounds the runs of one job waiting on it."""

from __future__ import annotations

import json

from nats.aio.client import Client

from agent.config import AgentConfig
from natsched.master.service import MasterService
from tests.conftest import AgentFactory
from tests.helpers import apply, job, toml_jobs


async def test_runs_past_the_agents_queue_limit_are_skipped_with_the_reason(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    assert AgentConfig.load(env={"NATSCHED_AGENT_MAX_QUEUED": "2"}, name="x").max_queued == 2
    await start_agent("ql", max_queued=2, shutdown_grace=0.2, kill_grace=0.2)
    await apply(
        nc,
        toml_jobs(
            job("slow", mode="slave", targets={"agents": ["ql"]}, command=["sleep", "30"], overlap="queue"),
            group="ql",
        ),
    )
    states = []
    for _ in range(5):
        reply = json.loads((await nc.request("natsched.trigger.ql.slow", b"{}", timeout=10)).data)
        states.append((reply["runs"][0]["state"], reply["runs"][0]["reason"]))
    assert [s for s, _ in states] == ["started", "queued", "queued", "skipped", "skipped"], states
    assert "2 runs already waiting" in states[-1][1]
