"""Services stop when asked and fail loudly when they cannot go on.

SIGTERM to a master or agent cut off from NATS; a connection the server closed for good;
``natsched up`` on SIGTERM, SIGHUP and kill -9; reconnect logging while the server is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from natsched import subjects
from natsched.embedded import EmbeddedServer, free_port
from tests.conftest import Process, eventually, said, wait_for_api
from tests.helpers import api, job, toml_jobs

pytestmark = pytest.mark.faults
NATSCHED = str(Path(sys.executable).parent / "natsched")


def _exit_within(process: Process, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    try:
        code = process.popen.wait(seconds + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {seconds + 5:g}s after SIGTERM:\n{process.output()[-3000:]}")
    return code, time.monotonic() - started


async def test_sigterm_stops_a_master_and_an_agent_cut_off_from_nats(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    master = spawn("natsched", "master", url=nats_server.url, log_name="master.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, master)
    agent = spawn("natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"), url=nats_server.url)
    await eventually(lambda: said(agent, "agent a1 connected"), 15, "the agent connected")
    await asyncio.sleep(0.5)
    nats_server.kill()  # kill -9: both are cut off, reconnecting
    await asyncio.sleep(1.5)
    for process in (master, agent):
        code, took = await asyncio.to_thread(_exit_within, process, 3)
        out = process.output()
        assert took <= 3, f"exited {took:.1f}s after SIGTERM:\n{out[-3000:]}"
        assert code == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]


async def test_a_master_whose_connection_the_server_closed_exits_nonzero_in_one_line(
    tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    # The server closes a connection for good when a protocol line is too long: here the
    # master's writes under a job's key (group and name at their 64-character limit).
    server = EmbeddedServer(
        data_dir=tmp_path / "small", port=free_port(), extra_config="max_control_line: 200\n"
    )
    server.start()
    try:
        master = spawn("natsched", "master", url=server.url, log_name="master.log")
        await asyncio.to_thread(wait_for_api, server.url, master)
        # The API answers before the start has ended; a start cut short is started again.
        await eventually(lambda: said(master, "serving natsched.api"), 15, "the master's start ended")
        import nats

        nc = await nats.connect(server.url)
        try:
            long = job("j" * 64, mode="slave", targets={"agents": ["ghost"]}, triggers=[{"every": "1s"}])
            jobs = toml_jobs(long, group="g" * 64)
            # The master's connection may be gone before it replies.
            with contextlib.suppress(nats.errors.TimeoutError):
                body = {"source": "long.toml", "content": jobs}
                await api(nc, subjects.API_APPLY, body, timeout=3)
        finally:
            await nc.close()
        try:
            code = await asyncio.to_thread(master.popen.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the master kept running without a connection:\n{master.output()[-3000:]}")
        out = master.output()
        assert code != 0
        assert "Traceback" not in out, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "NATS" in errors[0] and "closed" in errors[0], out[-3000:]
    finally:
        server.stop()


async def test_reconnect_attempts_are_logged_once_per_state_change(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    master = spawn("natsched", "master", url=nats_server.url, log_name="master.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, master)
    agent = spawn("natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"), url=nats_server.url)
    await eventually(lambda: said(agent, "agent a1 connected"), 15, "the agent connected")
    before = {p: len(p.output().splitlines()) for p in (master, agent)}
    nats_server.kill()
    await asyncio.sleep(5)  # at the old fixed 0.5 s: ~10 attempts, each logged
    nats_server.start()
    await eventually(lambda: said(agent, "reconnected"), 15, "the agent reconnected")
    await asyncio.sleep(1)
    lines = agent.output().splitlines()[before[agent] :]
    noise = [line for line in lines if "natsched.connection" in line]
    assert len(noise) <= 2, "\n".join(lines)  # the outage and its end
    assert len([line for line in lines if "reconnected" in line]) == 1, "\n".join(lines)
    lines = master.output().splitlines()[before[master] :]
    noise = [line for line in lines if "natsched.connection" in line or "lease:" in line]
    assert len(noise) <= 5, "\n".join(lines)  # the outage and its end; the lease's trouble and its end


def _up(tmp_path: Path, *, sigint_ignored: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    out_file = tmp_path / "up.out"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("NATS_URL", None)
    with open(out_file, "wb") as out:
        up = subprocess.Popen(
            [NATSCHED, "up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            # What a non-interactive shell does to a job it starts in the background (`up &`).
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )
    return up, out_file


def _children_once_up(up: subprocess.Popen[bytes], out_file: Path) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "joined" in out_file.read_text(errors="replace"):
            children = psutil.Process(up.pid).children(recursive=True)
            if len(children) >= 3:
                return children
        if up.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"natsched up did not start:\n{out_file.read_text()}")


@pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGKILL, False), (signal.SIGTERM, True)],
)
def test_up_takes_its_children_along(tmp_path: Path, sig: signal.Signals, background: bool) -> None:
    up, out_file = _up(tmp_path, sigint_ignored=background)
    children: list[psutil.Process] = []
    try:
        children = _children_once_up(up, out_file)
        os.kill(up.pid, sig)  # to `up` alone (systemd, a closed terminal, the OOM killer)
        code = up.wait(30)
        if sig != signal.SIGKILL:
            assert code == 0, out_file.read_text()
            assert "stopped" in out_file.read_text()
            assert "Traceback" not in out_file.read_text()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after {sig.name}: {[p.cmdline() for p in alive]}"
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for child in children:  # the processes this test's `up` started, and only those
            if child.is_running():
                child.kill()
