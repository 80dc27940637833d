"""An agent that stops because its name was taken over leaves every mirror slot of its own on
record: those it slept through (frozen past the heartbeat TTL) and those that fell due while
its stop waited for a running job, also when nats-server is down at the moment it stops.

The stop cancels the mirror schedule; the slots due after its last tick get one more tick,
which records them ``skipped``. That tick used to claim nothing (the schedule was settled
before it), so the slots due during the stop had no run and no record anywhere; and records
the stopping agent could not publish at once stayed in the outbox of a state dir that nobody
starts again (its name is another agent's). Here the mirror job targets a tag only the first
agent has: the agent that took the name does not run it, so such a slot is nobody's but the
stopping agent's to account for.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from natsched import subjects
from natsched.buckets import AGENT_TTL
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.conftest import Process, eventually
from tests.faults.test_agent_names import exited, holder_pid
from tests.faults.witness import events_of, executions, seen_by, started_on, witness_job, witnessed
from tests.helpers import apply, job, toml_jobs

pytestmark = pytest.mark.faults

GRACE = 3  # the stopping agent's shutdown grace: slots of the mirror job fall due meanwhile


def _agent(spawn: Callable[..., Process], url: str, state: Path, *args: str, life: str = "") -> Process:
    """Agent ``a2`` on ``state``; ``life`` names this process in the witness lines (``$LIFE``)."""
    env = {
        "NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5",
        "NATSCHED_AGENT_SHUTDOWN_GRACE": str(GRACE),
        "LIFE": life,
    }
    return spawn(
        "natsched-agent", "--name", "a2", "--state-dir", str(state), *args,
        url=url, log_name=f"{life or state.name}.log", env=env,
    )  # fmt: skip


async def test_an_agent_stopping_for_a_taken_name_publishes_a_record_of_every_slot_it_did_not_run(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness, long_witness = tmp_path / "tick", tmp_path / "long"
    old = _agent(spawn, nats_server.url, tmp_path / "old", "--tag", "solo")
    await seen_by(master, "a2")
    tick = witness_job(
        "tick",
        witness,
        mode="mirror",
        targets={"tags": ["solo"]},
        triggers=[{"every": "1s"}],
        misfire="run-all",
        misfire_cap=300,
    )
    long = job("long", mode="slave", targets={"agents": ["a2"]}, command=witnessed(60, long_witness))
    assert (await apply(nc, toml_jobs(tick, long, group="tr")))["ok"]
    await eventually(lambda: _ran(witness, 2), 15, "the first a2 running the mirror job")
    # A run still going when the agent wakes: its stop waits GRACE seconds for it.
    reply = json.loads((await nc.request(subjects.trigger_subject("tr.long"), b"{}", timeout=15)).data)
    assert all(run["ok"] for run in reply["runs"]), reply
    await eventually(lambda: started_on(long_witness, "a2"), 10, "the long run started")

    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
    os.kill(old.popen.pid, signal.SIGSTOP)
    try:

        async def expired() -> bool:
            try:
                await kv.get("a2")
            except KeyNotFoundError:
                return True
            return False

        await eventually(expired, AGENT_TTL + 10, "the frozen agent's heartbeat expired")
        twin = _agent(spawn, nats_server.url, tmp_path / "twin")

        async def twin_holds() -> bool:
            try:
                return await holder_pid(nc, "a2") == twin.popen.pid
            except KeyNotFoundError:
                return False

        await eventually(twin_holds, 20, "the second a2 took the name")
    finally:
        os.kill(old.popen.pid, signal.SIGCONT)
    woke = time.time()
    # nats-server dies while the woken agent's stop waits for its long run, and is back only
    # after the stop recorded the last slots: they wait for it, not in an outbox nobody reads.
    await asyncio.sleep(0.5)
    nats_server.kill()
    await asyncio.sleep(GRACE + 1.0)
    nats_server.start()
    assert await exited(old, 20) == 1, "the woken agent stops: its name was taken over"
    assert "taken over" in old.output() and "Traceback" not in old.output()

    events = await events_of(nc, "tr.tick")
    slot_of = {e["run_id"]: e["scheduled_at"] for e in events}
    ran = [run_id for run_id, *_ in executions(witness)]
    assert len(ran) == len(set(ran)), "no run of the mirror job executed twice"
    ran_slots = {slot_of[run_id] for run_id in ran}
    skipped = [e for e in events if e["state"] == "skipped"]
    assert all("taken over" in e["reason"] for e in skipped), skipped
    recorded = {e["scheduled_at"] for e in skipped}
    assert not ran_slots & recorded, "a slot that ran is not also recorded skipped"
    # Every slot from the first run until the stop's last tick (GRACE after waking, when the
    # long run was killed): run by the first agent, or recorded skipped by it.
    first, last = int(min(ran_slots)), int(woke) + GRACE - 1
    missing = [s for s in range(first, last + 1) if float(s) not in ran_slots | recorded]
    assert missing == [], f"mirror slots with no run and no record: {missing} (woke at {woke:.1f})"
    assert twin.popen.poll() is None, "the agent that took the name keeps running"


async def _ran(witness: Path, count: int) -> bool:
    return len(executions(witness)) >= count


async def test_a_state_dir_started_again_while_another_agent_holds_its_name_catches_up_nothing(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """systemd restarts an agent that stopped because its name was taken over (Restart=always):
    its mirror schedule, which starts from the cache before NATS answers, must not catch up the
    slots since its last run (the other agent ran them) before its first heartbeat refuses it."""
    witness = tmp_path / "tick"
    tick = job(
        "tick",
        mode="mirror",
        targets={"agents": ["a2"]},
        command=["sh", "-c", f'echo "$NATSCHED_RUN_ID $LIFE" >> {witness}'],
        env={"LIFE": "${LIFE}"},
        triggers=[{"every": "1s"}],
        misfire="run-all",
        misfire_cap=300,
    )
    first = _agent(spawn, nats_server.url, tmp_path / "old", life="first")
    await seen_by(master, "a2")
    assert (await apply(nc, toml_jobs(tick, group="rs")))["ok"]
    await eventually(lambda: _ran_in(witness, "first", 2), 15, "the first a2 running the mirror job")
    first.popen.terminate()  # a clean stop frees the name at once
    assert await exited(first, 15) == 0
    holder = _agent(spawn, nats_server.url, tmp_path / "new", life="holder")
    await eventually(lambda: _ran_in(witness, "holder", 3), 20, "another a2 took the name and runs the job")

    server = nats_server.pid
    assert server is not None
    os.kill(server, signal.SIGSTOP)  # NATS answers late: the start-up reaches the cache first
    try:
        again = _agent(spawn, nats_server.url, tmp_path / "old", life="again")

        async def connecting() -> bool:
            return "connecting to" in again.output()

        await eventually(connecting, 15, "the restarted agent started and is connecting")
        await asyncio.sleep(1.0)
    finally:
        os.kill(server, signal.SIGCONT)
    assert await exited(again, 15) == 1, "refused: the name is taken"
    assert "is taken" in again.output()
    await asyncio.sleep(1.0)  # a run it launched has written its line by now
    assert _lines(witness, "again") == [], "the refused start ran no slot the other agent ran"
    assert holder.popen.poll() is None


def _lines(witness: Path, life: str) -> list[str]:
    lines = witness.read_text().splitlines() if witness.exists() else []
    return [line.split()[0] for line in lines if line.endswith(f" {life}")]


async def _ran_in(witness: Path, life: str, count: int) -> bool:
    return len(_lines(witness, life)) >= count
