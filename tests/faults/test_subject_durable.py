"""Subject-trigger messages published while no master runs start their jobs once a master is
back, each exactly once (a witness file counts the real executions)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from tests.conftest import AgentFactory, Process, eventually, wait_for_api
from tests.helpers import apply, job, toml_jobs

pytestmark = pytest.mark.faults
MESSAGES = 5


async def start_master(spawn: Callable[..., Process], server: EmbeddedServer, name: str) -> Process:
    process = spawn("natsched", "master", url=server.url, log_name=f"{name}.log")
    await asyncio.to_thread(wait_for_api, server.url, process)
    return process


def witnessed(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def test_messages_published_while_no_master_runs_start_their_job_once_a_master_is_back(
    nats_server: EmbeddedServer,
    spawn: Callable[..., Process],
    nc: Client,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    first = await start_master(spawn, nats_server, "master-1")
    await start_agent("s1")
    on_order = job(
        "on-order",
        mode="slave",
        targets={"agents": ["s1"]},
        command=["sh", "-c", f'echo "$NATSCHED_MESSAGE" >> {witness}'],
        triggers=[{"subject": "orders.*"}],
    )
    assert (await apply(nc, toml_jobs(on_order, group="d")))["ok"]

    async def captured() -> bool:
        info = await nc.jetstream().stream_info(subjects.SUBJECTS_STREAM)
        return "orders.*" in (info.config.subjects or [])

    await eventually(captured, 10, "the master made the stream keep orders.*")
    await nc.publish("orders.new", b"before")
    await eventually(lambda: _seen(witness, "before"), 10, "a message with a master up")
    first.kill()  # kill -9: no master runs now
    for n in range(MESSAGES):
        await nc.publish("orders.new", f"while-down-{n}".encode())  # a plain publish, as any client does
    await nc.flush()
    await asyncio.sleep(1)
    assert not any(k.startswith("while-down") for k in witnessed(witness)), "nothing ran without a master"
    await start_master(spawn, nats_server, "master-2")
    await eventually(
        lambda: _seen(witness, *(f"while-down-{n}" for n in range(MESSAGES))), 15, "every kept message ran"
    )
    await asyncio.sleep(3)  # past the consumer's ack_wait: a redelivery would have run by now
    counts = witnessed(witness)
    assert all(n == 1 for n in counts.values()), f"a message ran twice: {counts}"


async def _seen(path: Path, *bodies: str) -> bool:
    counts = witnessed(path)
    return all(counts[b] >= 1 for b in bodies)
