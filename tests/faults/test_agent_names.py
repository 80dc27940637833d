"""One agent per name: a second ``natsched-agent`` with a taken name refuses to start.

Real agent processes; every job appends ``$NATSCHED_RUN_ID $NATSCHED_AGENT`` to a witness
file when it really runs, so a name served twice shows up as a run executed twice.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from natsched import codec, subjects
from natsched.buckets import AGENT_TTL
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.conftest import BIN, Process, eventually
from tests.faults.witness import agent_process, executions, frozen, seen_by, witness_job
from tests.helpers import apply, toml_jobs

pytestmark = pytest.mark.faults


async def holder_pid(nc: Client, name: str) -> int:
    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
    return codec.decode_heartbeat((await kv.get(name)).value or b"", name).pid


async def run_once(nc: Client, job_key: str, witness: Path) -> str:
    """Trigger ``job_key``; once its run executed, its run id."""
    reply = json.loads((await nc.request(f"natsched.trigger.{job_key}", b"{}", timeout=15)).data)
    [run] = reply["runs"]
    assert run["ok"], reply

    async def executed() -> bool:
        return any(run_id == run["run_id"] for run_id, _ in executions(witness))

    await eventually(executed, 10, "the run executed")
    await asyncio.sleep(1.0)  # time for a second copy to show up, if one ran
    return str(run["run_id"])


async def exited(process: Process, timeout: float) -> int:
    try:
        return await asyncio.to_thread(process.popen.wait, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second agent is still running:\n{process.output()}")


async def test_a_second_agent_with_a_taken_name_refuses_to_start_and_check_says_so(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    first = agent_process(spawn, nats_server.url, "a2", tmp_path / "a2")
    await seen_by(master, "a2")
    await apply(
        nc, toml_jobs(witness_job("w", witness, mode="slave", targets={"agents": ["a2"]}), group="nm")
    )

    second = spawn(
        "natsched-agent", "--name", "a2", "--state-dir", str(tmp_path / "a2-again"),
        url=nats_server.url, log_name="second.log",
    )  # fmt: skip
    assert await exited(second, 15) == 1
    where = f"host {socket.gethostname()}, pid {first.popen.pid}, since "
    [line] = [line for line in second.output().splitlines() if "is taken" in line]
    assert "agent name 'a2' is taken: it runs on " + where in line, second.output()
    assert "Traceback" not in second.output()
    assert first.popen.poll() is None and await holder_pid(nc, "a2") == first.popen.pid

    check = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "natsched-agent"), "--check", "--name", "a2", "--state-dir", str(tmp_path / "chk")],
        env={"NATS_URL": nats_server.url, "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"FAIL agent name 'a2' is taken: it runs on {where}" in check.stdout, check.stdout
    assert await holder_pid(nc, "a2") == first.popen.pid, "the check left the live agent's heartbeat alone"

    run_id = await run_once(nc, "nm.w", witness)
    assert executions(witness) == [(run_id, "a2")], "one agent a2, one execution"

    # A restart of the same agent on the same host is no second agent: its old process is gone.
    first.kill()
    again = agent_process(spawn, nats_server.url, "a2", tmp_path / "a2")

    async def restarted() -> bool:
        return again.popen.poll() is None and await holder_pid(nc, "a2") == again.popen.pid

    await eventually(restarted, 15, "the restarted agent took its name back")
    later = await run_once(nc, "nm.w", witness)
    assert executions(witness) == [(run_id, "a2"), (later, "a2")]


async def test_a_name_silent_past_the_ttl_is_free_and_its_old_agent_stops_when_it_wakes(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    old = agent_process(spawn, nats_server.url, "a2", tmp_path / "a2")
    await seen_by(master, "a2")
    await apply(
        nc, toml_jobs(witness_job("w", witness, mode="slave", targets={"agents": ["a2"]}), group="nm")
    )
    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)

    with frozen(old):

        async def expired() -> bool:
            try:
                await kv.get("a2")
            except KeyNotFoundError:
                return True
            return False

        await eventually(expired, AGENT_TTL + 10, "the frozen agent's heartbeat expired")
        new = spawn(
            "natsched-agent", "--name", "a2", "--state-dir", str(tmp_path / "a2-new"),
            url=nats_server.url, log_name="new.log", env={"NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5"},
        )  # fmt: skip
        await eventually(lambda: _held_by(nc, new), 15, "the new agent took the free name")
    # The old one wakes up, finds its name taken over, and stops in one line.
    assert await exited(old, 15) == 1
    assert "was taken over by the agent on host" in old.output() and "Traceback" not in old.output()
    assert new.popen.poll() is None and await holder_pid(nc, "a2") == new.popen.pid
    run_id = await run_once(nc, "nm.w", witness)
    assert executions(witness) == [(run_id, "a2")]


async def _held_by(nc: Client, process: Process) -> bool:
    try:
        return await holder_pid(nc, "a2") == process.popen.pid
    except KeyNotFoundError:
        return False
