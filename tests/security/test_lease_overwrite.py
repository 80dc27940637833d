"""Attack: an agent stops every master-scheduled run by having nats-server overwrite the lease.

nats-server writes the acknowledgement of a JetStream publish wherever the publisher's reply
subject points, unchecked against its permissions. Agent a1, writing one of its own claim keys
twenty times a second with the reply subject ``$KV.natsched_state.leader``, kept replacing the
leader lease with ``{"stream": …, "seq": …}``: the leader stepped down at each renewal, a master
took the lease again at once with a new term, agents could not read the term of the requests
they got and refused them: an every-second job did not run once in 8 s (one master; with a
standby, two of five slots ran, and the term rose at each take-over). A lease that no master
wrote (not a msgpack map) is now put back by its leader and is no reason for a standby to take
over before the lease's time is up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from natsched import subjects
from natsched.cli.masters import collect_masters
from natsched.client import AdminClient
from natsched.master.service import MasterService
from tests.conftest import eventually
from tests.helpers import file_lines, has_lines, job, toml_jobs
from tests.security.hostile import Secured


async def test_an_agent_cannot_depose_the_leader_by_overwriting_the_lease(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "ticks.txt"
    tick = job(
        "tick",
        mode="slave",
        targets={"agents": ["a1"]},
        command=["sh", "-c", f'echo "$NATSCHED_RUN_ID" >> {witness}'],
        triggers=[{"every": "1s"}],
    )
    standby = MasterService(secured.settings("natsched-master"))
    async with secured.services("a1"), standby, AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY, {"source": "sec.toml", "content": toml_jobs(tick, group="sec")}
        )
        assert reply["ok"], reply
        await eventually(lambda: has_lines(witness, 1), 10, "the job ticks")

        a1 = await secured.connect("agent-a1")
        carrier = (
            f"{subjects.kv_subject_prefix(subjects.CLAIMS_BUCKET)}{subjects.agent_claim_key('a1', 'carrier')}"
        )
        lease = f"{subjects.kv_subject_prefix(subjects.STATE_BUCKET)}{subjects.LEASE_KEY}"
        leaders = await _leaders(secured)
        start = time.time()
        end = time.monotonic() + 6.0
        while time.monotonic() < end:
            await a1.publish(carrier, b"x", reply=lease)
            await a1.flush()
            await asyncio.sleep(0.05)
        stop = time.time()
        await asyncio.sleep(1.5)  # the runs of the last slots of the attack are done by then
        assert await _leaders(secured) == leaders, "the leadership changed while a1 overwrote the lease"
        # A slot's run id starts with the time it was sent (ms, hex): right after its second.
        seconds = [int(line.split("-")[0], 16) // 1000 for line in file_lines(witness)]
        assert len(seconds) == len(set(seconds)), "a second ran twice"
        due = list(range(int(start) + 1, int(stop)))
        ran = [s for s in due if s in seconds]
        assert len(ran) >= len(due) - 1, f"of the slots {due} due while a1 overwrote the lease, ran {ran}"


async def _leaders(secured: Secured) -> list[tuple[str, int]]:
    """(master, term) of each master that says it leads (``natsched masters``)."""
    answers = await collect_masters(secured.settings("natsched-admin"), 0.5)
    assert len(answers) == 2, answers
    return sorted((a["master"], a["term"]) for a in answers if a["leader"])
