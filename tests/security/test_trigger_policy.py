"""Attacks by a trigger caller, on a real server with the generated per-role permissions.

The trigger role may start ``perm.hello``; the agent often runs as root. Whatever the
caller puts in the body, it changes only what the job's ``trigger`` policy opens up, and
a job's process never sees the agent's own credentials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import codec, subjects
from natsched.embedded import EmbeddedServer
from natsched.jobspec import job_to_dict, parse_job
from natsched.master.service import MasterService
from natsched.runmessages import RunRequest, decode_run_reply
from natsched.vocab import RunState, RunTrigger
from tests.conftest import eventually
from tests.helpers import api, job, stream_events, toml_jobs
from tests.security.test_permissions import connect_as, secured, settings

__all__ = ["secured"]  # the fixture, shared with the permission tests


def witness_job(witness: Path, **fields: Any) -> dict[str, Any]:
    """perm.hello: a bash job that records each real execution, then prints $TARGET and "$@"."""
    script = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}; echo "target=$TARGET args=$*"'
    return job(
        "hello", mode="slave", targets={"agents": ["a1"]}, command=["bash", "-c", script, "x"], **fields
    )


def in_process_agent(server: EmbeddedServer, tmp_path: Path) -> AgentService:
    config = AgentConfig(name="a1", pools=frozenset({"p"}), state_dir=tmp_path / "a1", heartbeat_interval=0.5)
    return AgentService(config, settings(server, "a1"))


async def finals(nc: Client, key: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key and not RunState(e["state"]).open]


async def trigger(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subjects.trigger_subject("perm.hello"), json.dumps(body).encode(), timeout=10)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def test_a_trigger_caller_changes_only_what_the_job_allows(
    secured: EmbeddedServer, tmp_path: Path
) -> None:
    witness, pwned = tmp_path / "witness", tmp_path / "pwned"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"id -un > {pwned}\n")
    async with MasterService(settings(secured, "master")), in_process_agent(secured, tmp_path) as agent:
        await agent.synced(10)
        admin = await connect_as(secured, "admin")
        reply = await api(
            admin,
            subjects.API_APPLY,
            {
                "source": "p.toml",
                "content": toml_jobs(witness_job(witness, trigger={"env": ["TARGET"]}), group="perm"),
            },
        )
        assert reply["ok"], reply
        bot = await connect_as(secured, "bot")
        attacks: list[tuple[dict[str, Any], str, str]] = [
            ({"env": {"BASH_ENV": str(evil)}}, "'env.BASH_ENV'", "never accepted"),
            ({"env": {"ENV": str(evil)}}, "'env.ENV'", "never accepted"),
            ({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "'env.LD_PRELOAD'", "never accepted"),
            ({"env": {"PATH": str(tmp_path)}}, "'env.PATH'", "never accepted"),
            ({"env": {"PYTHONSTARTUP": str(evil)}}, "'env.PYTHONSTARTUP'", "never accepted"),
            ({"env": {"TARGET": "t", "OTHER": "x"}}, "'env.OTHER'", "trigger.env allows: TARGET"),
            ({"args": ["--delete-everything"]}, "'args'", "takes no args"),
        ]
        for body, field, words in attacks:
            refused = await trigger(bot, body)
            assert refused["ok"] is False and field in refused["error"] and words in refused["error"], refused
            assert "\n" not in refused["error"]

        # What the job opens up still works, and the caller's value is data, never expanded.
        started = await trigger(bot, {"env": {"TARGET": "${NATS_PASSWORD}$(id)"}})
        assert started["ok"], started
        await eventually(lambda: _count(admin, "perm.hello", 1), 10, "the allowed run ended")
        [event] = await finals(admin, "perm.hello")
        assert (
            event["state"] == "succeeded" and event["output_tail"] == "target=${NATS_PASSWORD}$(id) args=\n"
        )
        assert len(witness.read_text().splitlines()) == 1, "only the allowed trigger ran the job"
        assert not pwned.exists(), "BASH_ENV/ENV never reached bash"
        for nc in (admin, bot):
            await nc.close()


async def test_the_agent_refuses_what_no_trigger_may_set(secured: EmbeddedServer, tmp_path: Path) -> None:
    """The last line: a run request that got past a master (a bug, an old master) still runs nothing."""
    witness, pwned = tmp_path / "witness", tmp_path / "pwned"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"id -un > {pwned}\n")
    open_job = parse_job(
        witness_job(witness, trigger={"env": ["TARGET"], "args": True}), default_group="perm"
    )
    closed_job = parse_job(witness_job(witness), default_group="perm")
    async with MasterService(settings(secured, "master")), in_process_agent(secured, tmp_path) as agent:
        await agent.synced(10)
        master_nc = await connect_as(secured, "master")

        async def dispatch(request: RunRequest) -> str:
            msg = await master_nc.request(subjects.agent_run_subject("a1"), request.encode(), timeout=10)
            reply = decode_run_reply(msg.data)
            assert reply.ok is False, reply
            return reply.reason

        def request(spec: Any, **fields: Any) -> RunRequest:
            return RunRequest(
                run_id=f"r{time.monotonic_ns()}", spec=spec, trigger=RunTrigger.MANUAL, **fields
            )

        assert "BASH_ENV" in await dispatch(request(open_job, env={"BASH_ENV": str(evil)}))
        assert "LD_PRELOAD" in await dispatch(request(open_job, env={"LD_PRELOAD": "/tmp/evil.so"}))
        assert "OTHER" in await dispatch(request(open_job, env={"OTHER": "x"}))
        assert "args" in await dispatch(request(closed_job, args=("--all",)))
        assert "TARGET" in await dispatch(request(closed_job, env={"TARGET": "x"}))
        # Only natsched's own subject runs carry the message variables.
        assert "NATSCHED_MESSAGE" in await dispatch(request(closed_job, env={"NATSCHED_MESSAGE": "m"}))
        # A definition that claims to let triggers set LD_PRELOAD is no definition at all.
        forged = job_to_dict(open_job) | {"trigger": {"env": ["LD_PRELOAD"]}}
        raw = codec.pack(
            {"run_id": "r-forged", "spec": forged, "trigger": "manual", "env": {"LD_PRELOAD": "x"}}
        )
        msg = await master_nc.request(subjects.agent_run_subject("a1"), raw, timeout=10)
        reply = decode_run_reply(msg.data)
        assert reply.ok is False and "LD_PRELOAD" in reply.reason
        assert not witness.exists() and not pwned.exists(), "nothing ran"
        await master_nc.close()


async def _count(nc: Client, key: str, n: int) -> bool:
    return len(await finals(nc, key)) >= n
