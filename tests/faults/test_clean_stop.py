"""Services stop cleanly in the states test_stopping.py does not reach: runs in flight past the
shutdown deadline's base, and a credential the server rejects (exit non-zero, one line).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer, free_port
from natsched.service import SHUTDOWN_DEADLINE
from natsched.vocab import RunState
from tests.conftest import Process, eventually, said
from tests.faults.witness import events_of
from tests.helpers import apply, job, toml_jobs

pytestmark = pytest.mark.faults


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_an_agent_stopping_with_a_run_in_flight_gives_it_the_grace_and_records_it_killed(
    nats_server: EmbeddedServer,
    master_process: Process,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    # A grace just past the base deadline: the agent used to exit 1 at SHUTDOWN_DEADLINE
    # ("did not stop within 10s"), its job's final event never sent.
    grace = SHUTDOWN_DEADLINE + 0.5
    env = {"NATSCHED_AGENT_SHUTDOWN_GRACE": str(grace), "NATSCHED_AGENT_KILL_GRACE": "1"}
    agent = spawn(
        "natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"),
        url=nats_server.url, log_name="agent.log", env=env,
    )  # fmt: skip
    await eventually(lambda: said(agent, "in sync at revision"), 15, "the agent synced")
    command = ["sleep", "120"]
    reply = await apply(
        nc, toml_jobs(job("long", mode="slave", targets={"agents": ["a1"]}, command=command), group="g")
    )
    assert reply["ok"], reply
    answer = json.loads((await nc.request(subjects.trigger_subject("g.long"), b"{}", timeout=10)).data)
    assert answer["ok"] and answer["runs"][0]["ok"], answer
    run_id, job_pid = answer["runs"][0]["run_id"], answer["runs"][0]["pid"]

    started = time.monotonic()
    agent.popen.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(agent.popen.wait, grace + 15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after SIGTERM:\n{agent.output()[-3000:]}")
    took = time.monotonic() - started
    out = agent.output()
    assert code == 0, out[-3000:]
    assert took >= grace - 0.5, f"the job did not get its grace: {took:.1f}s"
    assert "Traceback" not in out and "did not stop within" not in out, out[-3000:]
    assert _gone(job_pid)
    events = [e for e in await events_of(nc, "g.long") if e["run_id"] == run_id]
    assert events and events[-1]["state"] == RunState.KILLED, events


def _auth_server(tmp_path: Path, port: int, password: str) -> EmbeddedServer:
    # The master's and agent's own users, as `natsched permissions` would write them, are not
    # needed here: one user that may do everything, whose password changes.
    users = f'authorization {{ users = [ {{ user: svc, password: "{password}" }} ] }}\n'
    return EmbeddedServer(data_dir=tmp_path / "nats-auth", port=port, extra_config=users)


def _exited_refused(process: Process, within: float) -> str:
    try:
        code = process.popen.wait(within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running with a refused credential:\n{process.output()[-3000:]}")
    out = process.output()
    assert code != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused the credential" in errors[0], out[-3000:]
    assert "wrong-pw" not in out, out[-3000:]  # the password is not in the log
    return errors[0]


@pytest.mark.parametrize("role", ["master", "agent"])
async def test_a_service_whose_credential_the_server_refuses_exits_nonzero_in_one_line(
    tmp_path: Path, spawn: Callable[..., Process], role: str
) -> None:
    server = _auth_server(tmp_path, free_port(), "right")
    server.start()
    try:
        url = server.url.replace("nats://", "nats://svc:wrong-pw@")
        argv = ["natsched", "master"] if role == "master" else ["natsched-agent", "--name", "a1"]
        argv += [] if role == "master" else ["--state-dir", str(tmp_path / "a1")]
        process = spawn(*argv, url=url, log_name=f"{role}.log")
        await asyncio.to_thread(_exited_refused, process, 20)
    finally:
        server.stop()


async def test_an_agent_whose_credential_is_refused_after_a_server_restart_exits_nonzero(
    tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    port = free_port()
    server = _auth_server(tmp_path, port, "wrong-pw")  # the agent's password, accepted at first
    server.start()
    try:
        url = server.url.replace("nats://", "nats://svc:wrong-pw@")
        agent = spawn("natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"), url=url)
        await eventually(lambda: said(agent, "agent a1 connected"), 15, "the agent connected")
        server.stop()
        server = _auth_server(tmp_path, port, "rotated")  # the password rotated; the agent's is stale
        server.start()
        await asyncio.to_thread(_exited_refused, agent, 20)
    finally:
        server.stop()


async def test_services_stop_at_once_while_a_request_to_a_frozen_peer_is_outstanding(
    nats_server: EmbeddedServer,
    master_process: Process,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    env = {"NATSCHED_AGENT_SHUTDOWN_GRACE": "1"}
    agent = spawn(
        "natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"), url=nats_server.url, env=env
    )  # fmt: skip
    await eventually(lambda: said(agent, "in sync at revision"), 15, "the agent synced")
    reply = await apply(nc, toml_jobs(job("j", mode="slave", targets={"agents": ["a1"]}), group="g"))
    assert reply["ok"], reply
    first = json.loads((await nc.request(subjects.trigger_subject("g.j"), b"{}", timeout=10)).data)
    assert first["ok"], first  # the agent has the job and answers
    os.kill(agent.popen.pid, signal.SIGSTOP)  # the master's dispatch to it waits for an answer
    try:
        pending = asyncio.create_task(nc.request(subjects.trigger_subject("g.j"), b"{}", timeout=30))
        await asyncio.sleep(1.0)  # the dispatch request is out
        code, took = await asyncio.to_thread(_stopped, master_process, signal.SIGTERM)
        assert code == 0 and took < 5, (code, took, master_process.output()[-3000:])
        pending.cancel()
    finally:
        os.kill(agent.popen.pid, signal.SIGCONT)
    master2 = spawn("natsched", "master", url=nats_server.url, log_name="master2.log")
    await eventually(lambda: said(master2, "is the leader"), 20, "a master leads again")
    os.kill(master2.popen.pid, signal.SIGSTOP)  # the agent's stop must not wait on it
    try:
        code, took = await asyncio.to_thread(_stopped, agent, signal.SIGINT)
        assert code == 0 and took < 5, (code, took, agent.output()[-3000:])
    finally:
        os.kill(master2.popen.pid, signal.SIGCONT)
    for process in (master_process, agent):
        assert "Traceback" not in process.output(), process.output()[-3000:]


def _stopped(process: Process, sig: signal.Signals) -> tuple[int, float]:
    started = time.monotonic()
    process.popen.send_signal(sig)
    try:
        code = process.popen.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 15 s after {sig.name}:\n{process.output()[-3000:]}")
    return code, time.monotonic() - started
