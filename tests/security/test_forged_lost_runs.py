"""Attack: an agent lists runs it never had, then goes silent, so masters start them elsewhere.

An agent's heartbeat lists the runs going on there (run id -> job), and its events say which
runs it started: when the agent goes silent, a master records those runs ``lost`` and starts
again the load-balance ones whose job says ``redispatch_lost``. Agent a3, of no pool, listed
three made-up runs of the pool's job ``sec.lb`` (or published ``started`` events of them in
its own name), stopped heartbeating, and ``sec.lb`` ran three times on a1: a job a3 may not
start. A run is started again only when the master that dispatched a run to that agent says
so: the offer it recorded, or the agent's claim of a run id a master made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import codec, subjects
from natsched.client import AdminClient
from natsched.events import RunEvent, new_run_id
from natsched.master.service import MasterService
from natsched.vocab import RunState, RunTrigger
from tests.conftest import eventually
from tests.helpers import file_lines, job, toml_jobs
from tests.security.hostile import POOL, Secured


async def test_a_silent_agent_cannot_have_runs_it_never_had_started_elsewhere(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    master_service = MasterService(secured.settings("natsched-master"), unresponsive_after=1.5)
    a1 = AgentService(
        AgentConfig(name="a1", pools=frozenset({POOL}), state_dir=tmp_path / "a1", heartbeat_interval=0.3),
        secured.settings("agent-a1"),
    )
    async with master_service, a1, AdminClient(secured.settings("natsched-admin")) as admin:
        await a1.synced(10)
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job(
                        "lb",
                        mode="load-balance",
                        targets={"pools": [POOL]},
                        redispatch_lost=True,
                        command=append,
                    ),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply

        # a3 heartbeats as a live agent listing two runs of sec.lb it never had, and publishes
        # a started event of a third in its own name; then it goes silent.
        a3 = await secured.connect("agent-a3")
        agents = await a3.jetstream().key_value(subjects.AGENTS_BUCKET)
        real = codec.decode_heartbeat((await agents.get("a1")).value or b"", "a1")
        listed = {new_run_id(): "sec.lb", new_run_id(): "sec.lb"}
        started = RunEvent(
            run_id=new_run_id(), job="sec.lb", agent="a3", state=RunState.STARTED, trigger=RunTrigger.MANUAL
        )
        await a3.jetstream().publish(started.subject, started.to_json())
        for _ in range(3):
            forged = dataclasses.replace(
                real,
                agent="a3",
                pools=(),
                runs=listed,
                sent_at=time.time(),
                started_at=time.time() - 60,
                pid=1,
            )
            await agents.put("a3", codec.encode_heartbeat(forged))
            await asyncio.sleep(0.3)

        async def judged() -> bool:
            return "a3" in master_service.lost.down if master_service.lost is not None else False

        await eventually(judged, 10, "the master judged a3 lost")
        await asyncio.sleep(2.0)  # re-dispatches go out right after the lost events
        assert file_lines(witness) == [], "runs a3 never had were started on a1"
