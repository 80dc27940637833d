"""``natsched jobs list`` / ``agents`` / ``settings`` with an agent that defines its own jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from natsched.embedded import EmbeddedServer
from tests.cli.test_commands import natsched
from tests.conftest import Process
from tests.helpers import job, toml_jobs


def _until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.2)


def test_local_jobs_are_listed_with_their_origin_and_strict_says_why_they_are_refused(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    url = nats_server.url
    jobs_dir = tmp_path / "jobs.d"
    jobs_dir.mkdir()
    local_file = jobs_dir / "own.toml"
    local_file.write_text(
        toml_jobs(job("cleanup", command=["true"], triggers=[{"every": "1h"}]), group="ops")
    )
    spawn(
        "natsched-agent",
        "--name",
        "w1",
        "--state-dir",
        str(tmp_path / "w1"),
        "--jobs-dir",
        str(jobs_dir),
        url=url,
    )
    _until(lambda: "w1" in natsched("agents", "--json", url=url)[1])

    code, out = natsched("jobs", "list", "--json", url=url)
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["key"], r["origin"], r["state"]) for r in rows] == [
        ("ops.cleanup", f"agent w1: {local_file}", "active")
    ]
    code, out = natsched("jobs", "list", url=url)
    assert "ops.cleanup" in out and f"agent w1: {local_file}" in out

    code, out = natsched("settings", "set", "ops", "--replication", "strict", "--env", "A=1", url=url)
    assert code == 0 and "group ops: replication strict, A=1" in out, out
    code, out = natsched("settings", "show", url=url)
    assert "group ops: replication strict, A=1" in out

    def refused() -> bool:
        return "refused" in natsched("agents", url=url)[1]

    _until(refused)
    code, out = natsched("agents", url=url)
    assert f"local job ops.cleanup ({local_file}) refused: group ops is strict" in out, out

    assert natsched("settings", "delete", "ops", url=url)[0] == 0
    code, out = natsched("settings", "show", "ops", url=url)
    assert code == 1 and "has no settings" in out
    code, out = natsched("settings", "set", "ops", "--replication", "sloppy", url=url)
    assert code == 1 and "'sloppy' is not one of strict, easy" in out
    code, out = natsched(
        "settings", "set", "ops", "--notify", "ops.alerts", "--notify", "ops@example.org",
        "--notify-on", "failure", "--output-limit", "8KiB", url=url,
    )  # fmt: skip
    assert code == 0, out
    assert "output_limit 8192, notify ops.alerts on failure, notify ops@example.org on failure" in out, out
    code, out = natsched("settings", "set", "ops", "--output-limit", "1KiB", url=url)
    assert code == 1 and "output_limit" in out and "between 4KiB and 1GiB" in out, out
    code, out = natsched("settings", "set", "ops", "--tag", "db", "--env", "B=2", "--cwd", "/srv", url=url)
    assert code == 0 and "group ops tag db: B=2, cwd /srv" in out, out
    code, out = natsched("settings", "show", "ops", url=url)
    assert "group ops: replication easy" in out and "group ops tag db: B=2, cwd /srv" in out, out
    code, out = natsched("settings", "set", "ops", "--tag", "db", "--replication", "strict", url=url)
    assert code == 1 and "replication and notify are the whole group's" in out, out
    code, out = natsched("settings", "delete", "ops", "--tag", "db", url=url)
    assert code == 0 and "group ops tag db: settings deleted" in out, out
    code, out = natsched("settings", "show", "ops", url=url)
    assert "tag db" not in out and "group ops: replication easy" in out, out
