"""A file that arrives while its agent is down runs when the agent is back, and only then.

watchdog tells an agent only what happens while it watches: a file dropped while the agent
was killed -9 (or restarting, upgraded) never ran, and nothing said so. Files that already ran
must not run again after the restart, and files that were there before the job existed are its
baseline, not work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.conftest import Process, eventually, said
from tests.faults.witness import agent_process, executions, seen_by
from tests.helpers import apply, job, toml_jobs

pytestmark = pytest.mark.faults


async def test_a_file_dropped_while_the_agent_was_killed_runs_once_it_is_back(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    inbox, witness, state = tmp_path / "inbox", tmp_path / "witness", tmp_path / "f1"
    inbox.mkdir()
    (inbox / "old.csv").write_text("there before the job\n")
    first = agent_process(spawn, nats_server.url, "f1", state)
    await seen_by(master, "f1")
    ingest = job(
        "ingest",
        command=["sh", "-c", f'echo "$(basename $NATSCHED_FILE) $NATSCHED_AGENT" >> {witness}'],
        triggers=[{"watch": str(inbox), "patterns": ["*.csv"], "settle": 0.2}],
    )
    assert (await apply(nc, toml_jobs(ingest, group="fr")))["ok"]
    await eventually(lambda: said(first, "watching 1 director"), 10, "f1 watches the inbox")
    (inbox / "a.csv").write_text("1\n")

    async def ran(*names: str) -> bool:
        return {line[0] for line in executions(witness)} >= set(names)

    await eventually(lambda: ran("a.csv"), 10, "a.csv ran")
    first.kill()
    (inbox / "b.csv").write_text("2\n")  # while f1 is down
    second = agent_process(spawn, nats_server.url, "f1", state)
    await eventually(lambda: ran("a.csv", "b.csv"), 15, "b.csv ran once f1 was back")
    await asyncio.sleep(1.0)  # a second run of a.csv (or of old.csv) would have come by now
    assert sorted(line[0] for line in executions(witness)) == ["a.csv", "b.csv"], executions(witness)
    assert second.popen.poll() is None

    for name in ("a.csv", "b.csv"):
        (inbox / name).unlink()  # processed and removed, as an inbox is: their records go too

    async def forgotten() -> bool:
        with contextlib.closing(sqlite3.connect(state / "files.sqlite")) as db:
            return db.execute("SELECT path FROM file_versions").fetchall() == [(str(inbox / "old.csv"),)]

    await eventually(forgotten, 10, "the records of the removed files dropped")
