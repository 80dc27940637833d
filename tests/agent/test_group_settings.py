"""Replicated group settings on a real server: applied by agents, also restarted with NATS down."""

from __future__ import annotations

import socket
from pathlib import Path

import nats

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, toml_jobs


async def test_group_env_and_cwd_apply_under_the_jobs_own_also_after_a_restart_without_nats(
    nats_server: EmbeddedServer, conn: ConnectionSettings, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    workdir = tmp_path / "wd"
    workdir.mkdir()
    host = socket.gethostname()
    # No shell: natsched expands ${TARGET} and ${NATSCHED_AGENT} in argv ($$ is a literal $);
    # sh itself reads $1, $2, $GV... from its arguments and environment.
    script = f'echo "$1|$2|$GV|$JV|$HOSTNAME|$(pwd)|$$" >> {witness}'
    command = ["sh", "-c", script, "x", "${TARGET}", "${NATSCHED_AGENT}"]
    settings = {
        "replication": "easy",
        "env": {"GV": "from-group", "JV": "from-group", "TARGET": "/backup/${HOSTNAME}"},
        "cwd": str(workdir),
    }
    expected = f"/backup/{host}|g1|from-group|from-job|{host}|{workdir}|$"

    def runs() -> int:
        lines = witness.read_text().splitlines() if witness.exists() else []
        assert all(line == expected for line in lines), lines
        return len(lines)

    async with MasterService(conn):
        first = await start_agent("g1")
        nc = await nats.connect(nats_server.url)
        try:
            reply = await api(nc, subjects.API_SETTINGS_SET, {"group": "envg", "settings": settings})
            assert reply["ok"], reply
            spec = job("show", command=command, env={"JV": "from-job"}, triggers=[{"every": "1s"}])
            assert (await apply(nc, toml_jobs(spec, group="envg")))["ok"]
        finally:
            await nc.close()

        async def ran() -> bool:
            return runs() >= 1

        await eventually(ran, 10, "a run with the group's settings")
        await first.__aexit__(None, None, None)

    nats_server.stop()
    try:
        # A new agent process (same state dir) while NATS is down: settings from its SQLite copy.
        await start_agent("g1", wait_synced=False)
        before = runs()

        async def more() -> bool:
            return runs() >= before + 2

        await eventually(more, 10, "runs with the group's settings while NATS is down")
    finally:
        nats_server.start()


def test_argv_expansion_never_puts_a_secret_in_argv() -> None:
    """argv is public (ps): a variable holding a secret expands to nothing there."""
    from agent.environment import expand_argv

    env = {"DB_PASS": "s3cret", "URL": "db://u:s3cret@h", "TARGET": "/backup/db1"}
    argv, unknown = expand_argv(
        ("tool", "${TARGET}", "${DB_PASS}", "${URL}", "$${TARGET}", "${PROXY}"),
        env,
        {"PROXY": "http://p"},
        hidden=["s3cret"],
    )
    assert argv == ("tool", "/backup/db1", "", "", "${TARGET}", "http://p")
    assert unknown == ["DB_PASS", "URL"]
