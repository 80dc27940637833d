"""Run requests that decode but carry fields of the wrong type or shape (issue 15, item 8):
refused in the reply, nothing runs, the agent keeps its connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client

from natsched import codec, subjects
from natsched.claims import claim, open_claims
from natsched.jobspec import job_to_dict, parse_job
from natsched.master.service import MasterService
from tests.conftest import AgentFactory, eventually
from tests.helpers import job, stream_events


def request(witness: Path, **changes: Any) -> bytes:
    line = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}'
    spec = parse_job(job("w", group="g", mode="slave", targets={"agents": ["r1"]}, command=line, shell=True))
    body: dict[str, Any] = {
        "run_id": "18f0000000-abcdef012345",
        "spec": job_to_dict(spec),
        "trigger": "manual",
        "scheduled_at": None,
        "attempt": 1,
        "args": [],
        "env": {},
        "correlation_id": "",
        "master": "m",
        "detail": {},
        "term": 0,
    }
    body.update(changes)
    return codec.pack(body)


async def test_a_run_request_of_the_wrong_shape_is_refused_and_runs_nothing(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    await start_agent("r1")
    witness = tmp_path / "witness"
    hostile: dict[str, dict[str, Any]] = {
        "long-run-id": {"run_id": "r" * 5000},
        "crlf-run-id": {"run_id": "18f0000000-a\r\nNats-Msg-Id: x"},
        "int-run-id": {"run_id": 12345},
        "args-types": {"args": [1, None]},
        "env-types": {"env": {"A": 1}},
        "attempt-type": {"attempt": "1"},
        "term-type": {"term": "9"},
        "scheduled-type": {"scheduled_at": "now"},
        "detail-types": {"detail": {"retry_of": ["x"]}},
        "correlation-type": {"correlation_id": {"a": 1}},
        "unknown-field": {"dryrun": True},
    }
    for name, changes in hostile.items():
        reply = msgpack.unpackb(
            (await nc.request(subjects.agent_run_subject("r1"), request(witness, **changes), timeout=5)).data
        )
        assert reply["ok"] is False, (name, reply)
        assert "\n" not in reply["reason"] and len(reply["reason"]) < 400, (name, reply["reason"][:400])
    await asyncio.sleep(0.5)
    assert not witness.exists(), witness.read_text()
    sync = await nc.request(subjects.agent_sync_subject("r1"), b"", timeout=5)
    assert json.loads(sync.data)["agent"] == "r1"
    # the same request, well-formed, runs: the refusals were for the shape, not the job
    good = msgpack.unpackb(
        (await nc.request(subjects.agent_run_subject("r1"), request(witness), timeout=5)).data
    )
    assert good["ok"] is True, good


async def test_requests_arriving_together_start_no_more_than_max_concurrency(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Run requests are handled side by side (each waits on its claim, a KV round trip): the
    ones whose claim is still out count against max_concurrency, so ten requests arriving at
    once on an agent allowed three runs start three and are told busy for the rest."""
    await start_agent("r1", max_concurrency=3)
    witness = tmp_path / "witness"
    line = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}; sleep 5'
    spec = parse_job(job("w", group="g", mode="slave", targets={"agents": ["r1"]}, command=line, shell=True))
    bodies = [
        msgpack.unpackb(request(witness, run_id=f"18f0000000-{i:012x}", spec=job_to_dict(spec)))
        for i in range(10)
    ]
    async with asyncio.timeout(20):
        replies = [
            msgpack.unpackb(msg.data)
            for msg in await asyncio.gather(
                *(nc.request(subjects.agent_run_subject("r1"), codec.pack(b), timeout=10) for b in bodies)
            )
        ]
        started = [r for r in replies if r["ok"]]
        assert len(started) == 3, replies
        assert all(r["reason"].startswith("busy: 3/3") for r in replies if not r["ok"]), replies
        while len(witness.read_text().splitlines() if witness.exists() else []) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert len(witness.read_text().splitlines()) == 3, "exactly the three accepted runs executed"


async def test_a_request_whose_claim_a_master_withdrew_runs_and_records_nothing(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """The agent prepares a run (environment, secrets) while its claim is out: a claim lost
    meanwhile must undo all of it. A job whose secret cannot be read is prepared as failed;
    with the claim lost that failure is not recorded either (the run was never this agent's)."""
    await start_agent("r1")  # no secret key: a job naming a secret cannot be prepared here
    witness = tmp_path / "witness"
    claims = await open_claims(nc.jetstream())
    plain = parse_job(
        job(
            "w",
            group="g",
            mode="slave",
            targets={"agents": ["r1"]},
            command=f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}',
            shell=True,
        )
    )
    secret = parse_job(
        job("s", group="g", mode="slave", targets={"agents": ["r1"]}, env={"X": "${secret:x}"})
    )
    runs = {"18f0000000-0000000000a1": plain, "18f0000000-0000000000a2": secret}
    for run_id, spec in runs.items():
        withdrawn = await claim(claims, subjects.agent_claim_key("r1", run_id), master="m")
        assert withdrawn.won
        body = request(witness, run_id=run_id, spec=job_to_dict(spec))
        reply = msgpack.unpackb((await nc.request(subjects.agent_run_subject("r1"), body, timeout=5)).data)
        assert reply["ok"] is False and "withdrawn by master m" in reply["reason"], reply
    # the same agent does run (and record) what it claims: the refusals were the claims'
    good = msgpack.unpackb(
        (await nc.request(subjects.agent_run_subject("r1"), request(witness), timeout=5)).data
    )
    assert good["ok"] is True, good
    await eventually(lambda: _final(nc, good["run_id"]), 10, "the claimed run ended")
    assert [line.split()[0] for line in witness.read_text().splitlines()] == [good["run_id"]]
    recorded = {e["run_id"] for e in await stream_events(nc)}
    assert not recorded & set(runs), "nothing recorded for the runs whose claim was withdrawn"


async def _final(nc: Client, run_id: str) -> bool:
    return any(e["run_id"] == run_id and e["state"] == "succeeded" for e in await stream_events(nc))
