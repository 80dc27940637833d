"""File triggers: one run per stable file, never a half-written one."""

from __future__ import annotations

import asyncio
import collections
import logging
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from agent.service import AgentService
from natsched.master.service import MasterService
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, stream_events, toml_jobs


async def test_file_trigger_fires_once_per_stable_file(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    agent = await start_agent("a1")
    await apply(
        nc,
        toml_jobs(
            job(
                "ingest",
                command=["sh", "-c", 'wc -c < "$NATSCHED_FILE"; echo "$NATSCHED_FILE"'],
                triggers=[{"watch": str(inbox), "patterns": ["*.csv"], "settle": 0.6}],
            ),
            group="f",
        ),
    )
    await eventually(lambda: _watching(agent), 10, "file watcher picked up the job")

    # Written slowly: pauses shorter than the settle time must not fire a half-written file.
    with open(inbox / "slow.csv", "w") as f:  # noqa: ASYNC230 - slow writes are the point
        for _ in range(4):
            f.write("x" * 1000)
            f.flush()
            await asyncio.sleep(0.3)
    for i in range(10):  # many at once: one run each
        (inbox / f"batch{i}.csv").write_text(f"{i}\n")
    (inbox / "ignored.txt").write_text("not a csv")

    async def all_ran() -> bool:
        return len(_succeeded(await stream_events(nc))) >= 11

    await eventually(all_ran, 20, "11 runs")
    await asyncio.sleep(1.5)  # would-be duplicates have had their chance
    runs = _succeeded(await stream_events(nc))
    per_file = collections.Counter(e["detail"]["file"] for e in runs)
    assert set(per_file) == {str(inbox / "slow.csv")} | {str(inbox / f"batch{i}.csv") for i in range(10)}
    assert max(per_file.values()) == 1
    slow = next(e for e in runs if e["detail"]["file"].endswith("slow.csv"))
    assert slow["output_tail"].splitlines()[0].strip() == "4000"  # saw the complete file


async def _watching(agent: AgentService) -> bool:
    """The job is known and its baseline taken (the observer starts after it): a file written
    before that is part of the baseline, which never runs."""
    return agent.files is not None and bool(agent.files._jobs) and agent.files.watching


def _succeeded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["job"] == "f.ingest" and e["state"] == "succeeded"]


async def test_files_whose_events_the_kernel_dropped_still_run(
    master: MasterService,
    nc: Client,
    start_agent: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    agent = await start_agent("a1")
    trigger = {"watch": str(inbox), "patterns": ["*.csv"], "settle": 0.2}
    await apply(nc, toml_jobs(job("ingest", command=["true"], triggers=[trigger]), group="f"))
    await eventually(lambda: _watching(agent), 10, "file watcher picked up the job")
    assert agent.files is not None
    # The kernel's inotify queue overflowing (~20k files at once) loses events: here the
    # events of these files are lost on purpose, then watchdog says so as it does then.
    monkeypatch.setattr(agent.files, "notice", lambda path, kind: None)
    for i in range(5):
        (inbox / f"lost{i}.csv").write_text(f"{i}\n")
    await asyncio.sleep(0.5)  # their events came and went
    monkeypatch.undo()
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )

    async def all_ran() -> bool:
        return len(_succeeded(await stream_events(nc))) >= 5

    await eventually(all_ran, 10, "the 5 files whose events were lost ran")
    await asyncio.sleep(0.5)
    per_file = collections.Counter(e["detail"]["file"] for e in _succeeded(await stream_events(nc)))
    assert per_file == {str(inbox / f"lost{i}.csv"): 1 for i in range(5)}
