"""The services' event loop (natsched/eventloop.py): uvloop in the real master and agent
processes, and jobs that need a working directory or another user still start there
(agent/spawn.py spawn_as: Popen, not the loop's subprocess support, which uvloop's refuses)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from natsched import eventloop, subjects
from natsched.embedded import EmbeddedServer
from tests.conftest import Process, eventually, said, wait_for_api
from tests.helpers import api, job, toml_jobs


def test_uvloop_unless_the_stock_loop_is_asked_for_or_the_agent_cannot_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvloop

    monkeypatch.delenv(eventloop.CHOICE, raising=False)
    assert eventloop.loop_factory() is uvloop.new_event_loop
    assert eventloop.loop_factory(uvloop_ok=False) is None  # an agent without pidfds
    monkeypatch.setenv(eventloop.CHOICE, "asyncio")
    assert eventloop.loop_factory() is None
    monkeypatch.setenv(eventloop.CHOICE, "bogus")
    assert eventloop.loop_factory() is uvloop.new_event_loop  # warned, default kept


def _on_uvloop(process: Process) -> bool:
    return "uvloop" in Path(f"/proc/{process.popen.pid}/maps").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="running a job as another user needs root")
async def test_jobs_with_a_directory_or_a_user_run_on_a_uvloop_agent(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    master = spawn("natsched", "master", url=nats_server.url, log_name="master.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, master)
    agent = spawn("natsched-agent", "--name", "u1", "--state-dir", str(tmp_path / "u1"), url=nats_server.url)
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Where "nobody" can write: pytest's tmp_path is root's alone (mode 0700 above it).
    shared = Path(tempfile.mkdtemp(prefix="natsched-loop-", dir="/tmp"))
    os.chmod(shared, 0o777)
    witness = shared / "witness"
    witness.touch()
    os.chmod(witness, 0o666)  # the umask may have taken write access from others
    nobody = pwd.getpwnam("nobody")
    jobs = toml_jobs(
        job("here", mode="slave", command=["sh", "-c", f"pwd >> {witness}"], cwd=str(workdir)),
        job("them", mode="slave", command=["sh", "-c", f"id -un >> {witness}"], user="nobody"),
        group="loop",
    )
    nc = await nats.connect(nats_server.url)
    try:
        applied = await api(nc, subjects.API_APPLY, {"source": "loop.toml", "content": jobs})
        assert applied.get("ok"), applied

        await eventually(lambda: said(agent, "agent u1 connected"), 20, "agent u1 connected")
        for name in ("here", "them"):
            # Until the master has seen u1's heartbeat, a trigger is refused (and runs nothing).
            reply: dict[str, object] = {}
            async with asyncio.timeout(20):
                while not reply.get("ok"):
                    reply = await api(nc, f"natsched.trigger.loop.{name}", {}, timeout=15)
                    await asyncio.sleep(0 if reply.get("ok") else 0.2)
        await eventually(
            lambda: asyncio.sleep(0, result=len(witness.read_text().splitlines()) == 2), 15, "both jobs ran"
        )
        ran = sorted(witness.read_text().splitlines())
    finally:
        await nc.close()
        shutil.rmtree(shared, ignore_errors=True)
    assert ran == sorted([str(workdir), nobody.pw_name])
    assert _on_uvloop(master) and _on_uvloop(agent), "the services run on uvloop"
