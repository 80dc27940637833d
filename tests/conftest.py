"""Shared fixtures: a real nats-server per test on a free port, JetStream in a temp dir.

Services run in the test's event loop (``master``, ``start_agent``) or as real
processes (``master_process``, ``spawn``) where the test needs to kill them or drive
the CLI, which calls ``asyncio.run`` itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched.embedded import EmbeddedServer, free_port
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.helpers import started_master

BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault tests run one after another in one xdist worker (``--dist loadgroup``): each
    kills and restarts servers and processes with timing bounds that a second fault test on
    the same two cores would stretch; the other tests share the other worker."""
    for item in items:
        if item.get_closest_marker("faults") is not None:
            item.add_marker(pytest.mark.xdist_group("faults"))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    # sync_interval: always (the default), as in production: fault tests kill -9 the server,
    # and with the 2-minute default an acknowledged event could vanish with it.
    server = EmbeddedServer(data_dir=tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def conn(nats_server: EmbeddedServer) -> ConnectionSettings:
    return ConnectionSettings(url=nats_server.url, connect_timeout=2.0)


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture
async def master(conn: ConnectionSettings) -> AsyncIterator[MasterService]:
    service = await started_master(lambda: MasterService(conn))
    try:
        yield service
    finally:
        await service.__aexit__(None, None, None)


AgentFactory = Callable[..., Awaitable[AgentService]]


@pytest.fixture
async def start_agent(conn: ConnectionSettings, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """``await start_agent("a1", tags=frozenset({"db"}))``: an agent with its own state dir
    (``settings``: connecting otherwise than to the test's server directly, e.g. via a proxy)."""
    started: list[AgentService] = []

    async def factory(
        name: str, *, wait_synced: bool = True, settings: ConnectionSettings | None = None, **config: Any
    ) -> AgentService:
        config.setdefault("state_dir", tmp_path / f"agent-{name}")
        config.setdefault("heartbeat_interval", 0.5)
        config.setdefault("sync_check_interval", 0.5)
        # A run still going when the test ends is not waited for (the 10 s default grace).
        config.setdefault("shutdown_grace", 1.0)
        agent = AgentService(AgentConfig(name=name, **config), settings or conn)
        await agent.__aenter__()
        started.append(agent)
        if wait_synced:
            await agent.synced(10)
        return agent

    yield factory
    for agent in reversed(started):
        await agent.__aexit__(None, None, None)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``check`` until it is true, failing after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - polling an outcome is the point
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"not true within {timeout}s: {what or check}")


class Process:
    """A natsched process started by a test; stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


async def said(process: Process, text: str) -> bool:
    """For ``eventually``: has ``process`` written ``text`` to its log yet?"""
    return text in process.output()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Process]]:
    """``spawn("natsched-agent", "--name", "a1", url=...)``: a console script as a real process.

    At the end all are stopped at once, in a thread: a master or agent of the test's own event
    loop must keep answering meanwhile (an agent's last lock release goes to the master).
    """
    processes: list[Process] = []

    def factory(
        script: str, *args: str, url: str, log_name: str | None = None, env: dict[str, str] | None = None
    ) -> Process:
        env = {**os.environ, "NATS_URL": url, **(env or {})}
        log = tmp_path / (log_name or f"{script}-{len(processes)}.log")
        process = Process([str(BIN / script), *args], env, log)
        processes.append(process)
        return process

    yield factory
    await asyncio.to_thread(_stop_all, processes)


def _stop_all(processes: list[Process]) -> None:
    for process in processes:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        process.terminate()


@pytest.fixture
def master_process(nats_server: EmbeddedServer, spawn: Callable[..., Process]) -> Iterator[Process]:
    """A real ``natsched master`` process, ready to answer the API."""
    process = spawn("natsched", "master", url=nats_server.url, log_name="master.log")
    wait_for_api(nats_server.url, process)
    yield process


def wait_for_api(url: str, process: Process, timeout: float = 15.0) -> None:
    async def ping() -> None:
        async with asyncio.timeout(timeout):
            nc = await nats.connect(url)
            try:
                while True:
                    if process.popen.poll() is not None:
                        raise RuntimeError(f"master exited: {process.output()}")
                    try:
                        await nc.request("natsched.api.ping", b"{}", timeout=1)
                        return
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        await asyncio.sleep(0.05)
            finally:
                await nc.close()

    asyncio.run(ping())
