"""An agent frozen past the heartbeat TTL, whose name another agent took meanwhile, runs
nothing when it wakes: it stops (in one line) before its mirror schedule catches up.

Otherwise the woken agent fires every mirror slot it slept through (misfire ``run-all``)
in the moment before its next heartbeat finds the name taken, and the slots the new agent
already ran under that name run twice. Executions are counted from a witness file that
says which life of ``a2`` ran each one.
"""

from __future__ import annotations

import asyncio
import os
import signal
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
from tests.faults.witness import seen_by
from tests.helpers import api, apply, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults


def _life(spawn: Callable[..., Process], url: str, life: str, state: Path) -> Process:
    return spawn(
        "natsched-agent", "--name", "a2", "--state-dir", str(state),
        url=url, log_name=f"{life}.log", env={"NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5", "LIFE": life},
    )  # fmt: skip


def _run_ids(witness: Path) -> list[str]:
    return [line.split()[0] for line in witness.read_text().splitlines()] if witness.exists() else []


def _runs_of(witness: Path, life: str) -> list[str]:
    lines = witness.read_text().splitlines() if witness.exists() else []
    return [line.split()[0] for line in lines if line.endswith(f" {life}")]


async def test_an_agent_woken_after_its_name_was_taken_runs_no_mirror_slot(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    old = _life(spawn, nats_server.url, "old", tmp_path / "old")
    await seen_by(master, "a2")
    every_second = job(
        "tick",
        mode="mirror",
        targets={"agents": ["a2"]},
        command=["sh", "-c", f'echo "$NATSCHED_RUN_ID $LIFE" >> {witness}'],
        env={"LIFE": "${LIFE}"},
        triggers=[{"every": "1s"}],
        misfire="run-all",
        misfire_cap=300,
    )
    dispatched = job(
        "sent",
        mode="slave",
        targets={"agents": ["a2"]},
        command=["sh", "-c", f'echo "$NATSCHED_RUN_ID $LIFE" >> {witness.with_suffix(".slave")}'],
        env={"LIFE": "${LIFE}"},
        triggers=[{"every": "1s"}],
        misfire="run-all",
        misfire_cap=300,
    )
    assert (await apply(nc, toml_jobs(every_second, dispatched, group="tw")))["ok"]

    async def old_ticking() -> bool:
        return len(_runs_of(witness, "old")) >= 2

    await eventually(old_ticking, 15, "the first a2 running the mirror job")
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
        new = _life(spawn, nats_server.url, "new", tmp_path / "new")

        async def new_ticking() -> bool:
            try:
                holder = await holder_pid(nc, "a2")
            except KeyNotFoundError:
                return False
            return holder == new.popen.pid and len(_runs_of(witness, "new")) >= 2

        await eventually(new_ticking, 20, "the second a2 took the name and runs the mirror job")
        before_wake = _runs_of(witness, "old")
    finally:
        os.kill(old.popen.pid, signal.SIGCONT)
    assert await exited(old, 15) == 1, "the woken agent stops: its name was taken over"
    await asyncio.sleep(1.0)  # anything the old life spawned has written its line by now
    assert _runs_of(witness, "old") == before_wake, "the woken agent ran nothing (no catch-up)"
    # (A slave request the old life claimed just before it froze is still its own to run when
    # it wakes: claimed means run once. That it ran nothing twice and lost no slot is asserted
    # below over both lives; requiring no late execution at all raced with the freeze.)
    assert "taken over" in old.output() and "Traceback" not in old.output()
    assert new.popen.poll() is None, "the new agent keeps running"
    # The slots it slept through are recorded skipped (by the woken agent, saying why), not dropped.
    mirror = [e for e in await stream_events(nc) if e["job"] == "tw.tick"]
    skipped = [e for e in mirror if e["state"] == "skipped"]
    assert skipped and all("taken over" in e["reason"] for e in skipped), skipped
    # Every slot of the freeze is on record: run by a life of a2, or skipped by the woken one.
    slot_of = {e["run_id"]: e["scheduled_at"] for e in mirror}
    ran = {slot_of[run_id] for life in ("old", "new") for run_id in _runs_of(witness, life)}
    recorded = {e["scheduled_at"] for e in skipped}
    first, last = min(ran), min(slot_of[run_id] for run_id in _runs_of(witness, "new"))
    missing = [slot for slot in range(int(first), int(last)) if float(slot) not in ran | recorded]
    assert missing == [], f"mirror slots of the freeze with no run and no record: {missing}"
    # Run requests the frozen agent held when it woke: not claimed by it (the master gives up
    # on them and records them), so no slot of the slave job vanishes.
    await asyncio.sleep(7.0)  # the master's 5 s dispatch timeout on the last of them, and its record
    assert (await api(nc, subjects.API_JOBS_DISABLE, {"jobs": ["tw.sent"]}))["ok"]
    await asyncio.sleep(1.0)
    events = [e for e in await stream_events(nc) if e["job"] == "tw.sent"]
    slot_of = {e["run_id"]: e["scheduled_at"] for e in events}
    executed = _run_ids(witness.with_suffix(".slave"))
    ran = {slot_of[run_id] for run_id in executed}
    recorded = {e["scheduled_at"] for e in events if e["state"] in ("failed", "skipped", "lost")}
    first, last = min(ran), max(slot_of.values())
    silent = [slot for slot in range(int(first), int(last) + 1) if float(slot) not in ran | recorded]
    assert silent == [], f"slots of the slave job with no run and no record: {silent}"
    assert len(executed) == len(set(executed)) == len(ran), "each slot ran at most once"
