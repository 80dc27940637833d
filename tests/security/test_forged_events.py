"""Attack: an agent forging other agents' events and log output."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from natsched import subjects
from natsched.client import AdminClient
from natsched.events import RunEvent, RunState, new_run_id
from natsched.runs import list_runs
from natsched.vocab import RunTrigger
from tests.conftest import BIN, eventually
from tests.helpers import file_lines, has_lines, job, stream_events, toml_jobs
from tests.security.hostile import USERS, Secured


def forged(run_id: Any, job: str, agent: str, state: RunState, **fields: Any) -> bytes:
    event = RunEvent(run_id="x", job=job, agent=agent, state=state, trigger=RunTrigger.MANUAL)
    body = json.loads(event.to_json())
    body.update(run_id=run_id, **fields)
    return json.dumps(body).encode()


def cli(secured: Secured, *args: str) -> subprocess.CompletedProcess[str]:
    """A natsched command as the admin user, over TLS, in its own process."""
    env = {
        **os.environ,
        "NATS_URL": f"tls://127.0.0.1:{secured.server.port}",
        "NATS_USER": "natsched-admin",
        "NATS_PASSWORD": USERS["natsched-admin"][0],
        "NATS_CA": str(secured.certs["ca"]),
        "NATS_CERT": str(secured.certs["client"]),
        "NATS_KEY": str(secured.certs["client-key"]),
    }
    return subprocess.run([str(BIN / "natsched"), *args], env=env, capture_output=True, text=True, timeout=60)


async def test_an_agent_cannot_speak_for_another_agent_or_crash_the_listings(
    secured: Secured, tmp_path: Path
) -> None:
    up_witness, down_witness = tmp_path / "up.txt", tmp_path / "down.txt"

    def append(witness: Path) -> list[str]:
        return ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}; echo real-output']

    async with secured.services("a1", "a2"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job(
                        "up",
                        mode="slave",
                        targets={"agents": ["a2"]},
                        command=append(up_witness),
                        retries={"attempts": 1, "backoff": 0.1, "jitter": 0},
                    ),
                    job(
                        "down",
                        mode="slave",
                        targets={"agents": ["a2"]},
                        command=append(down_witness),
                        triggers=[{"after": ["sec.up"], "agents": ["a2"]}],
                    ),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply
        a1 = await secured.connect("agent-a1")
        fake = new_run_id()
        # a1 claims a2 succeeded (the chain counts only a2's completions) ...
        await a1.publish(
            subjects.event_subject("a1", "sec.up", "succeeded"),
            forged(fake, "sec.up", "a2", RunState.SUCCEEDED, exit_code=0),
        )
        # ... reports a failure of a job that never ran on it (a retry would run it on a1) ...
        await a1.publish(
            subjects.event_subject("a1", "sec.up", "failed"),
            forged(new_run_id(), "sec.up", "a1", RunState.FAILED, exit_code=1),
        )
        # ... and sends a run id of the wrong type.
        await a1.publish(
            subjects.event_subject("a1", "sec.up", "failed"), forged(12345, "sec.up", "a1", RunState.FAILED)
        )
        await a1.flush()
        await asyncio.sleep(1.5)  # a retry (backoff 0.1 s) or the chain would have run by now
        assert file_lines(up_witness) == [] and file_lines(down_witness) == []
        runs = await list_runs(admin.nc.jetstream())
        assert [r for r in runs if r.latest.agent == "a2"] == []  # no forged success shown on a2
        for command in (["runs"], ["status", "--once"]):
            result = cli(secured, *command)
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr

        # The real thing still works: a2's completion runs the chain, its output is a2's.
        started = json.loads(
            (await admin.nc.request(subjects.trigger_subject("sec.up"), b"{}", timeout=10)).data
        )
        run_id = started["runs"][0]["run_id"]
        await eventually(lambda: has_lines(down_witness, 1), 15, "a2's real completion started the chain")
        assert [line.split()[1] for line in file_lines(up_witness)] == ["a2"]
        # a1 appends to a2's run output: under its own name (allowed, but not that run's
        # output) and under a2's (refused by the server).
        await a1.publish(subjects.log_subject("a1", run_id), b"FORGED-OUTPUT\n")
        await a1.publish(f"natsched.log.a2.{run_id}", b"FORGED-OUTPUT\n")
        await a1.publish(f"natsched.log.{run_id}", b"FORGED-OUTPUT\n")
        await a1.flush()
        await asyncio.sleep(0.5)
        result = cli(secured, "logs", run_id)
        assert result.returncode == 0, result.stderr
        assert "real-output" in result.stdout and "FORGED" not in result.stdout
        events = await stream_events(admin.nc)
        assert not [e for e in events if e.get("detail", {}).get("retry_of")]
