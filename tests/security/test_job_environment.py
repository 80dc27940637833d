"""A job never sees the agent's credentials: a real ``natsched-agent`` process started as
``deploy/agent.env`` starts it (NATS_USER/NATS_PASSWORD in its environment), on a server
with the generated per-role permissions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.kvscan import scan
from natsched.master.service import MasterService
from tests.conftest import Process, eventually
from tests.helpers import api, job, stream_events, toml_jobs
from tests.security.test_permissions import USERS, connect_as, secured, settings
from tests.security.test_secrets import log_text

__all__ = ["secured"]  # the fixture, shared with the permission tests

AGENT_ENV = {
    "NATS_USER": "a1",
    "NATS_PASSWORD": USERS["a1"][0],
    "NATSCHED_AGENT_NAME": "a1",
    "NATSCHED_AGENT_POOLS": "p",
    "NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5",
    "AWS_SECRET_ACCESS_KEY": "aws-leak-value",
    "GITHUB_TOKEN": "gh-leak-value",
    "HTTPS_PROXY": "http://proxy.example:3128",
    "LANG": "C.UTF-8",
}
LEAKS = ("NATS_", "NATSCHED_AGENT_", USERS["a1"][0], "aws-leak-value", "gh-leak-value")


async def test_a_job_gets_a_clean_environment_never_the_agents_credentials(
    secured: EmbeddedServer, tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    witness = tmp_path / "witness"
    state = tmp_path / "agent-state"
    show = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}; env | sort'
    jobs = toml_jobs(
        job("env", mode="slave", targets={"agents": ["a1"]}, command=["sh", "-c", show]),
        job(
            "ask",  # a job may name a variable it needs; credentials expand to nothing
            mode="slave",
            targets={"agents": ["a1"]},
            command=["sh", "-c", show],
            env={"P": "x${NATS_PASSWORD}", "T": "x${GITHUB_TOKEN}", "PROXY": "${HTTPS_PROXY}"},
        ),
        group="perm",
    )
    async with MasterService(settings(secured, "master")):
        admin = await connect_as(secured, "admin")
        assert (await api(admin, subjects.API_APPLY, {"source": "e.toml", "content": jobs}))["ok"]
        agent = spawn(
            "natsched-agent",
            "--state-dir",
            str(state),
            url=secured.url,
            env={**AGENT_ENV, "HOME": str(tmp_path)},
        )

        async def live() -> bool:
            assert agent.popen.poll() is None, agent.output()
            return "a1" in await scan(admin.jetstream(), subjects.AGENTS_BUCKET)

        await eventually(live, 15, "the agent process is up under its own credential")
        outputs: dict[str, dict[str, Any]] = {}
        for name in ("env", "ask"):
            reply = await api(admin, subjects.trigger_subject(f"perm.{name}"), {})
            assert reply["ok"], reply
            run_id = reply["runs"][0]["run_id"]

            async def ended(run_id: str = run_id) -> bool:
                return any(
                    e["run_id"] == run_id and e["state"] == "succeeded" for e in await stream_events(admin)
                )

            await eventually(ended, 10, f"perm.{name} ended")
            [event] = [
                e for e in await stream_events(admin) if e["run_id"] == run_id and e["state"] == "succeeded"
            ]
            outputs[name] = {"tail": event["output_tail"], "log": await log_text(admin, run_id, "a1")}
        assert len(witness.read_text().splitlines()) == 2

        for name, seen in outputs.items():
            for text in seen.values():
                assert text and not [leak for leak in LEAKS if leak in text], (name, text)
            variables = dict(line.split("=", 1) for line in seen["tail"].splitlines() if "=" in line)
            assert (
                variables["LANG"] == "C.UTF-8" and variables["HOME"] == str(tmp_path) and "PATH" in variables
            )
            assert variables["NATSCHED_AGENT"] == "a1"
        assert "proxy.example" not in outputs["env"]["tail"], "not passed through unless the job names it"
        asked = dict(line.split("=", 1) for line in outputs["ask"]["tail"].splitlines() if "=" in line)
        assert asked["P"] == "x" and asked["T"] == "x" and asked["PROXY"] == AGENT_ENV["HTTPS_PROXY"]
        await admin.close()
