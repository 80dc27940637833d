"""An agent whose state dir cannot be used exits 1 with one line, before it needs NATS."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiosqlite
import pytest

from agent.cache import JobCache
from natsched.embedded import free_port

AGENT = str(Path(sys.executable).parent / "natsched-agent")


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_unusable_state_dir_is_one_line_and_exit_1(tmp_path: Path, where: str) -> None:
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        state = tmp_path / "file" / "state"
    else:
        state = Path(f"/proc/{os.getpid()}")  # exists; nobody may create files there, root neither
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}  # no server: not needed
    done = subprocess.run(
        [AGENT, "--name", "a1", "--state-dir", str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"state dir {state} is not usable" in errors[0], out


async def test_an_unusable_state_dir_fails_before_aiosqlite_starts_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiosqlite's failed connect leaves its thread to answer the loop later: when the agent had
    # exited by then, Python printed that thread's traceback (seen in CI, the "proc" case above).
    connects: list[object] = []
    monkeypatch.setattr(aiosqlite, "connect", lambda *args, **kwargs: connects.append(args))
    with pytest.raises(sqlite3.OperationalError):
        await JobCache(Path(f"/proc/{os.getpid()}") / "cache.db").open()
    assert connects == []
