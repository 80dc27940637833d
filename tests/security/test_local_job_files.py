"""Attack: a local user who may write a file in the agent's ``jobs_dir`` runs commands as root.

The agent (root, as deployed) ran every job file of its ``jobs_dir`` whoever owned it and
whoever could write it: a file left group- or world-writable, a file owned by another user,
or a directory others may write into (add a file, or replace one) let any local user run
anything as root, every second. Like cron, the agent now reads only files that root or its
own user owns and nobody else may write, in a directory of the same kind.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import job, toml_jobs

NOBODY = 65534


def _file(directory: Path, name: str, witness: Path, mode: int, owner: int | None = None) -> None:
    path = directory / name
    script = f'echo "$NATSCHED_RUN_ID $(id -u) {name}" >> {witness}'
    path.write_text(
        toml_jobs(
            job(name.split(".")[0], command=script, shell=True, triggers=[{"every": "1s"}]), group="own"
        )
    )
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, -1)


def _ran(witness: Path) -> set[str]:
    return {line.split()[2] for line in witness.read_text().splitlines()} if witness.exists() else set()


async def test_job_files_others_may_write_are_not_run(
    conn: ConnectionSettings, start_agent: AgentFactory, tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs.d"
    jobs_dir.mkdir(mode=0o755)
    witness = tmp_path / "witness"
    _file(jobs_dir, "safe.toml", witness, 0o644)
    _file(jobs_dir, "world.toml", witness, 0o666)
    _file(jobs_dir, "group.toml", witness, 0o664)
    _file(jobs_dir, "theirs.toml", witness, 0o644, owner=NOBODY)
    async with MasterService(conn):
        agent = await start_agent("l1", jobs_dir=jobs_dir, local_scan_interval=0.2)
        assert agent.local is not None

        async def safe_ran() -> bool:
            return "safe.toml" in _ran(witness)

        await eventually(safe_ran, 10, "the safe file's job ran")
        await asyncio.sleep(1.5)
        assert _ran(witness) == {"safe.toml"}
        errors = agent.local.errors
        assert "writable by group or others" in errors[str(jobs_dir / "world.toml")], errors
        assert "writable by group or others" in errors[str(jobs_dir / "group.toml")], errors
        assert f"owned by uid {NOBODY}" in errors[str(jobs_dir / "theirs.toml")], errors

        # A directory others may write into: nothing of it runs any more (a file may be swapped).
        jobs_dir.chmod(0o777)
        await asyncio.sleep(0.5)
        count = len(witness.read_text().splitlines())
        await asyncio.sleep(1.5)
        assert len(witness.read_text().splitlines()) == count, "jobs ran from a world-writable directory"
        assert "writable by group or others" in agent.local.errors[str(jobs_dir)], agent.local.errors
