"""Load balancing by figures the heartbeats carry, on a real server with real agents."""

from __future__ import annotations

import json
from collections import Counter

from nats.aio.client import Client

from natsched.master.service import MasterService
from tests.conftest import AgentFactory
from tests.helpers import apply, job, toml_jobs


async def test_a_burst_spreads_over_idle_agents_before_their_heartbeats_show_it(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    """Six back-to-back triggers of a long job with balance = "running": the heartbeats still
    say both agents are idle (sent every 60 s here), so only the master's own count of the runs
    it started since can spread them."""
    lb = {"pools": frozenset({"p"}), "heartbeat_interval": 60, "shutdown_grace": 0.5}
    await start_agent("b1", **lb)
    await start_agent("b2", **lb)
    await apply(
        nc,
        toml_jobs(
            job(
                "long",
                mode="load-balance",
                targets={"pools": ["p"]},
                balance="running",
                command=["sleep", "5"],
            ),
            group="lb",
        ),
    )
    chosen: Counter[str] = Counter()
    for _ in range(6):
        msg = await nc.request("natsched.trigger.lb.long", b"{}", timeout=15)
        reply = json.loads(msg.data)
        assert reply["ok"] and reply["runs"][0]["ok"], reply
        chosen[reply["runs"][0]["agent"]] += 1
    assert chosen == {"b1": 3, "b2": 3}, chosen
