"""An agent killed -9 mid-run: its job dies with it, is not run twice, and is accounted for.

Jobs append ``$NATSCHED_RUN_ID $NATSCHED_AGENT start|end`` to a witness file, so the
assertions count real executions, not events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, Process, eventually
from tests.faults.witness import agent_process, events_of, executions, seen_by, witnessed
from tests.helpers import apply, job, toml_jobs

pytestmark = pytest.mark.faults


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def test_a_job_dies_with_its_agent_and_the_redispatched_copy_runs_alone(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    async with MasterService(conn, unresponsive_after=2.0) as master:
        victim = agent_process(
            spawn, nats_server.url, "victim", tmp_path / "victim", "--pool", "lb", priority=1
        )
        await start_agent("survivor", pools=frozenset({"lb"}), priority=5)

        await seen_by(master, "victim", timeout=15)
        command = witnessed(3, witness)
        await apply(
            nc,
            toml_jobs(
                job(
                    "long",
                    mode="load-balance",
                    targets={"pools": ["lb"]},
                    command=command,
                    redispatch_lost=True,
                ),
                group="orph",
            ),
        )
        reply = json.loads((await nc.request("natsched.trigger.orph.long", b"{}", timeout=10)).data)
        first = reply["runs"][0]
        assert first["agent"] == "victim", reply

        async def on_record() -> bool:
            return any(e["state"] == "started" for e in await events_of(nc, "orph.long"))

        await eventually(on_record, 10, "the run's started event")

        async def executing() -> bool:
            return (first["run_id"], "victim", "start") in executions(witness)

        await eventually(executing, 10, "the job executing (its witness line)")
        [started] = [e for e in await events_of(nc, "orph.long") if e["state"] == "started"]
        victim.kill()  # kill -9 mid-run (the job leads its own session: the signal misses it)

        async def job_gone() -> bool:
            return not alive(started["pid"])

        await eventually(job_gone, 3, "the job's process ended with its agent")

        async def redone() -> bool:
            return any(
                e["state"] == "succeeded" and e["detail"].get("lost_run") == first["run_id"]
                for e in await events_of(nc, "orph.long")
            )

        await eventually(redone, 20, "the run redone on the survivor")
        await asyncio.sleep(1.0)  # an orphaned first copy (started 1 s earlier) would have ended by now
        runs = executions(witness)
        print("executions:", runs)
        [redo] = [r[0] for r in runs if r[1] == "survivor" and r[2] == "start"]
        assert runs == [
            (first["run_id"], "victim", "start"),
            (redo, "survivor", "start"),
            (redo, "survivor", "end"),
        ], "the first copy died with its agent, the second ran alone"


async def test_a_restarted_agent_reports_the_run_it_was_running_and_queues_the_waiting_ones(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    state = tmp_path / "phoenix"
    seconds = tmp_path / "seconds"
    seconds.write_text("30")
    agent = agent_process(spawn, nats_server.url, "phoenix", state, priority=1)

    await seen_by(master, "phoenix", timeout=15)
    await apply(
        nc,
        toml_jobs(
            job(
                "q",
                mode="slave",
                targets={"agents": ["phoenix"]},
                command=witnessed(seconds, witness),
                overlap="queue",
            ),
            group="rs",
        ),
    )  # fmt: skip
    runs = []
    for _ in range(3):
        reply = json.loads((await nc.request("natsched.trigger.rs.q", b"{}", timeout=10)).data)
        runs.append(reply["runs"][0]["run_id"])

    async def recorded() -> bool:
        states = {(e["run_id"], e["state"]) for e in await events_of(nc, "rs.q")}
        return (runs[0], "started") in states and all((r, "queued") in states for r in runs[1:])

    await eventually(recorded, 10, "one run started, two queued behind it")

    async def executing() -> bool:
        return (runs[0], "phoenix", "start") in executions(witness)

    await eventually(executing, 10, "the first run executing (its witness line)")
    [started] = [e for e in await events_of(nc, "rs.q") if e["state"] == "started"]
    agent.kill()

    async def job_gone() -> bool:
        return not alive(started["pid"])

    await eventually(job_gone, 3, "the job's process ended with its agent")
    seconds.write_text("0.1")  # the queued runs are quick
    # Back before any master would call it lost (10 s): only the agent can account for the runs.
    agent = agent_process(spawn, nats_server.url, "phoenix", state, priority=1)

    async def accounted() -> bool:
        latest: dict[str, str] = {}
        for e in await events_of(nc, "rs.q"):
            latest[e["run_id"]] = e["state"]
        return (
            latest.get(runs[0]) == "lost"
            and all(latest.get(r) for r in runs[1:])
            and all(latest[r] in ("succeeded", "failed") for r in runs[1:])
        )

    await eventually(accounted, 20, "the run that was going is lost; the queued ones ran after the restart")
    events = await events_of(nc, "rs.q")
    [lost] = [e for e in events if e["state"] == "lost"]
    assert lost["run_id"] == runs[0] and "restarted" in lost["reason"], lost
    assert {e["run_id"]: e["state"] for e in events if e["state"] == "succeeded"} == dict.fromkeys(
        runs[1:], "succeeded"
    )
    done = executions(witness)
    print("executions:", done)
    assert [r[0] for r in done if r[2] == "start"] == runs, "each run executed once, in order"
    assert (runs[0], "phoenix", "end") not in done


async def test_a_restarted_agent_frees_the_cluster_lock_of_the_run_it_lost(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    state = tmp_path / "locked"
    agent = agent_process(spawn, nats_server.url, "locked", state, "--pool", "lk", priority=1)

    await seen_by(master, "locked", timeout=15)
    await apply(
        nc,
        toml_jobs(
            job(
                "one",
                mode="load-balance",
                targets={"pools": ["lk"]},
                command=["sleep", "30"],
                overlap="forbid",
            ),
            group="lk",
        ),
    )
    first = json.loads((await nc.request("natsched.trigger.lk.one", b"{}", timeout=10)).data)["runs"][0]
    assert first["state"] == "started", first
    agent.kill()
    agent = agent_process(spawn, nats_server.url, "locked", state, "--pool", "lk", priority=1)

    async def closed() -> bool:
        return any(
            e["state"] == "lost" and e["run_id"] == first["run_id"] for e in await events_of(nc, "lk.one")
        )

    await eventually(closed, 15, "the restarted agent recorded its run lost")

    async def runs_again() -> bool:
        reply = json.loads((await nc.request("natsched.trigger.lk.one", b"{}", timeout=10)).data)
        return bool(reply["runs"][0]["state"] == "started")

    # Before the fix the lost run kept the lock while its (live) agent heartbeated: every run
    # after it was skipped "overlap forbid" until the agent stopped.
    await eventually(runs_again, 10, "the job runs again (its lock was freed)")
