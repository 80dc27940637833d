"""Replicated group settings on a real server: applied by agents, also restarted with NATS down."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import nats

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, toml_jobs
from tests.security.test_secrets import finals, log_text


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


async def test_group_output_limit_caps_the_runs_of_jobs_without_their_own(
    nats_server: EmbeddedServer, conn: ConnectionSettings, start_agent: AgentFactory
) -> None:
    size = 40_000  # printed by each run: ten times the group's cap, within the job's own
    printer = ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"]
    slave = {"mode": "slave", "targets": {"agents": ["o1"]}}
    async with MasterService(conn):
        agent = await start_agent("o1")
        nc = await nats.connect(nats_server.url)
        try:
            settings = {"output_limit": "4KiB"}
            reply = await api(nc, subjects.API_SETTINGS_SET, {"group": "outg", "settings": settings})
            assert reply["ok"] and reply["settings"]["output_limit"] == 4096, reply

            async def cached() -> bool:
                return agent.groups.of("outg") is not None

            await eventually(cached, 10, "the agent cached the group's settings")
            jobs = toml_jobs(
                job("capped", command=printer, **slave),
                job("own", command=printer, output_limit="64KiB", **slave),
                group="outg",
            )
            assert (await apply(nc, jobs))["ok"]
            stored: dict[str, str] = {}
            for name in ("capped", "own"):
                reply = json.loads(
                    (await nc.request(f"natsched.trigger.outg.{name}", b"{}", timeout=10)).data
                )
                run_id = reply["runs"][0]["run_id"]

                async def ended(key: str = f"outg.{name}") -> bool:
                    return bool(await finals(nc, key))

                await eventually(ended, 15, f"outg.{name} ended")
                stored[name] = await log_text(nc, run_id, "o1")
        finally:
            await nc.close()
    head, marker, _ = stored["capped"].partition("\n[natsched: ")
    assert head == "x" * 4096 and marker, "the group's 4KiB cap applies: head kept, the cut marked"
    assert len(stored["capped"]) < 1.25 * 4096 + 200
    assert stored["own"] == "x" * size, "the job's own output_limit overrides the group's"


async def test_a_tag_layer_applies_over_the_group_on_agents_with_the_tag_only(
    nats_server: EmbeddedServer, conn: ConnectionSettings, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    workdir = tmp_path / "db-wd"
    workdir.mkdir()
    script = f'echo "$NATSCHED_AGENT|$GV|$TV|$JV|$(pwd)" >> {witness}'
    async with MasterService(conn):
        tagged = await start_agent("t1", tags=frozenset({"db", "linux"}))
        plain = await start_agent("t2", tags=frozenset({"linux"}))
        nc = await nats.connect(nats_server.url)
        try:
            for tag, settings in (
                (None, {"env": {"GV": "group", "JV": "group"}, "cwd": "/"}),
                ("db", {"env": {"GV": "db", "TV": "db", "JV": "db"}, "cwd": str(workdir)}),
                ("linux", {"env": {"TV": "linux"}}),  # for t1 applied after db (names in order)
            ):
                body = {"group": "tg", "settings": settings, **({"tag": tag} if tag else {})}
                reply = await api(nc, subjects.API_SETTINGS_SET, body)
                assert reply["ok"], reply
            refused = await api(
                nc,
                subjects.API_SETTINGS_SET,
                {"group": "tg", "tag": "db", "settings": {"replication": "strict"}},
            )
            assert not refused["ok"] and "replication and notify are the whole group's" in refused["error"]

            async def cached() -> bool:
                a, b = tagged.groups.of("tg"), plain.groups.of("tg")
                return a is not None and a.cwd == str(workdir) and b is not None and "TV" in b.env

            await eventually(cached, 10, "both agents cached the group and their tags' layers")
            spec = job(
                "show",
                mode="slave",
                targets={"tags": ["linux"]},
                command=["sh", "-c", script],
                env={"JV": "job"},
            )
            assert (await apply(nc, toml_jobs(spec, group="tg")))["ok"]
            await nc.request("natsched.trigger.tg.show", b"{}", timeout=10)

            async def both_ran() -> bool:
                return witness.exists() and len(witness.read_text().splitlines()) == 2

            await eventually(both_ran, 10, "the job ran on both agents")
        finally:
            await nc.close()
    # t1 (db, linux): the group, then db's layer, then linux's (names in order): TV from linux.
    assert sorted(witness.read_text().splitlines()) == [f"t1|db|linux|job|{workdir}", "t2|group|linux|job|/"]
