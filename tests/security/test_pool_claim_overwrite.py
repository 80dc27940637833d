"""Attack: a pool member overwrites the pool claim of a run another member took, then goes silent.

A load-balance run that no agent took by name goes to the pool's queue group; the member that
takes it writes its pool claim ``pool.<pool>.<run_id>`` naming itself, and the master's offer
record names that claim. Any member of the pool may write the pool's claim keys (its
credential must, to take runs from the queue group). Member a2 overwrote the pool claim of a
run a1 took, naming itself, listed the run in its heartbeat and went silent: the master took
the claim for its word that a2 had the run (``offers.handed``), and started it again while it
still ran on a1. The offer record now names the agent that took a run from the queue group
(from its reply to the master), and only that agent's loss starts it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import codec, subjects
from natsched.claims import Claim, ClaimedRun, encode_claim
from natsched.client import AdminClient, request_trigger
from natsched.master.service import MasterService
from natsched.vocab import RunTrigger
from tests.conftest import eventually
from tests.helpers import file_lines, has_lines, job, toml_jobs
from tests.security.hostile import POOL, Secured


async def test_a_pool_member_cannot_have_a_run_another_member_took_started_again(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}; sleep 30']
    master_service = MasterService(secured.settings("natsched-master"), unresponsive_after=1.5)
    # a1 takes only group "other" by name: a run of sec.lb reaches it through the pool's queue group.
    a1 = AgentService(
        AgentConfig(
            name="a1",
            pools=frozenset({POOL}),
            groups=frozenset({"other"}),
            state_dir=tmp_path / "a1",
            heartbeat_interval=0.3,
        ),
        secured.settings("agent-a1"),
    )
    async with master_service, a1, AdminClient(secured.settings("natsched-admin")) as admin:
        await a1.synced(10)
        spec = job("lb", mode="load-balance", targets={"pools": [POOL]}, redispatch_lost=True, command=append)
        reply = await admin.call(
            subjects.API_APPLY, {"source": "sec.toml", "content": toml_jobs(spec, group="sec")}
        )
        assert reply["ok"], reply
        triggered = await request_trigger(await secured.connect("natsched-admin"), "sec.lb", {})
        [run] = triggered["runs"]
        assert run["agent"] == "a1", run
        run_id = run["run_id"]
        await eventually(lambda: has_lines(witness, 1), 10, "the run started on a1")

        # a2, a member of pool p, overwrites a1's pool claim of the run with its own name,
        # lists the run in its heartbeat, then goes silent.
        a2 = await secured.connect("agent-a2")
        claims = await a2.jetstream().key_value(subjects.CLAIMS_BUCKET)
        taken = ClaimedRun.of("sec.lb", RunTrigger.MANUAL.value, None, 1, {}, at=time.time())
        await claims.put(
            subjects.pool_claim_key(POOL, run_id),
            encode_claim(Claim(agent="a2", nonce=secrets.token_hex(8), run=taken)),
        )
        agents = await a2.jetstream().key_value(subjects.AGENTS_BUCKET)
        real = codec.decode_heartbeat((await agents.get("a1")).value or b"", "a1")
        for _ in range(3):
            forged = dataclasses.replace(
                real,
                agent="a2",
                groups=(),
                runs={run_id: "sec.lb"},
                sent_at=time.time(),
                started_at=time.time() - 60,
                pid=1,
            )
            await agents.put("a2", codec.encode_heartbeat(forged))
            await asyncio.sleep(0.3)

        async def judged() -> bool:
            return "a2" in master_service.lost.down if master_service.lost is not None else False

        await eventually(judged, 10, "the master judged a2 lost")
        await asyncio.sleep(2.0)  # a re-dispatch goes out right after the lost events
        assert [line.split()[0] for line in file_lines(witness)] == [run_id], "a1's run ran again"
