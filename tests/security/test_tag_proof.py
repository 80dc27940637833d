"""Attack: an agent names a tag in its heartbeat to be sent the runs of jobs aimed at that tag.

An agent's heartbeat (which it writes itself) names its tags, and the masters sent a slave run
of a job aimed at a tag to every live agent whose heartbeat named it, and followed those
agents' completions of the job with its chains and notifications. Agent a3, whose credential
has no tag, only had to put ``web`` in its configuration (or its heartbeat) to run every job
aimed at ``web`` with its trigger's args and env, and to report completions of them. A tag
now counts only when the agent wrote ``tagged.<tag>.<agent>`` in ``natsched_claims``, which
only a credential given that tag may write; a key nats-server itself wrote there for a3 (the
acknowledgement of a publish, sent to the reply subject a3 chose) proves nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import subjects
from natsched.buckets import StorageSettings
from natsched.claims import encode_membership, open_claims
from natsched.cli.agents import read_agents
from natsched.client import AdminClient
from natsched.master.service import MasterService
from natsched.web.reads import overview
from tests.conftest import eventually
from tests.helpers import file_lines, has_lines, job, toml_jobs
from tests.security.hostile import TAG, Secured
from tests.security.test_pool_membership import has_key


@pytest.mark.parametrize("route", ["config", "ack"])
async def test_an_agent_cannot_take_a_tag_its_credential_does_not_give(
    secured: Secured, tmp_path: Path, route: str
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    tagged = {"a1": frozenset({TAG}), "a3": frozenset({TAG})}
    if route == "ack":  # before a3 starts: nats-server writes a3's tag key for it
        a3 = await secured.connect("agent-a3")
        key = subjects.kv_subject_prefix(subjects.CLAIMS_BUCKET) + subjects.tag_member_key(TAG, "a3")
        async with secured.services():  # the buckets exist once a master has started
            await a3.publish(f"{subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)}a3", b"x", reply=key)
            await a3.flush()
            claims = await a3.jetstream().key_value(subjects.CLAIMS_BUCKET)
            await eventually(lambda: has_key(claims, subjects.tag_member_key(TAG, "a3")), 5, "written for a3")
            await (await a3.jetstream().key_value(subjects.AGENTS_BUCKET)).delete("a3")  # its "heartbeat"
    async with (
        secured.services("a1", "a3", tags=tagged, pools={"a3": frozenset()}),
        AdminClient(secured.settings("natsched-admin")) as admin,
    ):
        content = toml_jobs(job("each", mode="slave", targets={"tags": [TAG]}, command=append), group="sec")
        reply = await admin.call(subjects.API_APPLY, {"source": "sec.toml", "content": content})
        assert reply["ok"], reply
        for _ in range(3):
            answer = await admin.call(f"{subjects.TRIGGER_PREFIX}.sec.each", {})
            assert answer["ok"], answer
        await eventually(lambda: has_lines(witness, 3), 10, "a1 ran each trigger")
        await asyncio.sleep(1.0)  # a run sent to a3 would have started by now
        ran_on = sorted(line.split()[1] for line in file_lines(witness))
        assert ran_on == ["a1", "a1", "a1"], ran_on
        for agent, listed in (("a1", ["sec.each"]), ("a3", [])):  # `natsched jobs list --agent`
            jobs = await admin.call(subjects.API_JOBS_LIST, {"agent": agent})
            assert [row["key"] for row in jobs["jobs"]] == listed, (agent, jobs)


def test_permissions_give_an_agent_the_tags_named_for_it(tmp_path: Path) -> None:
    natsched = str(Path(sys.executable).parent / "natsched")
    base = [natsched, "permissions", "--credentials-dir", str(tmp_path / "creds")]
    done = subprocess.run(
        [*base, "--agent", "a1:p", "--agent", "a2", "--agent-tags", "a1:web,db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    block = done.stdout
    users = json.loads(block[block.index("users = ") + len("users = ") : block.rindex("}")])
    publish = {entry["user"]: entry["permissions"]["publish"]["allow"] for entry in users}
    prefix = subjects.kv_subject_prefix(subjects.CLAIMS_BUCKET)
    assert {f"{prefix}tagged.web.a1", f"{prefix}tagged.db.a1"} <= set(publish["agent-a1"])
    assert not [s for s in publish["agent-a2"] if ".tagged." in s], publish["agent-a2"]
    refused = subprocess.run(
        [*base, "--agent", "a1", "--agent-tags", "a9:web"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "a9" in refused.stderr and "--agent" in refused.stderr and "Traceback" not in refused.stderr


async def test_agents_and_the_dashboard_mark_the_tags_the_masters_do_not_count(
    secured: Secured, tmp_path: Path
) -> None:
    """``natsched agents`` and the dashboard showed a heartbeat's tags as written: a3, whose
    credential has no tag, was listed with tag web (the operator upgrading with permissions
    that give no tags saw every agent with its tags, and no run of them going there). They now
    take from the masters which tags (and pools) they do not count, and mark them."""
    tagged = {"a1": frozenset({TAG}), "a3": frozenset({TAG})}
    async with secured.services("a1", "a3", tags=tagged, pools={"a3": frozenset()}):
        unproven: dict[str, list[str]] = {}

        async def marked() -> bool:
            unproven.clear()
            await read_agents(secured.settings("natsched-admin"), unproven=unproven)
            return "a3" in unproven

        await eventually(marked, 10, "a3's tag marked")
        assert unproven == {"a3": [f"tag {TAG}"]}, unproven
        web = await secured.connect("natsched-web")
        rows = {row["agent"]: row for row in (await overview(web))["agents"]}
        assert (rows["a1"]["unproven"], rows["a3"]["unproven"]) == ([], [f"tag {TAG}"]), rows


async def test_a_tag_proof_its_agent_can_no_longer_write_stops_counting(
    secured: Secured, tmp_path: Path
) -> None:
    """An agent whose credential lost a tag cannot rewrite its proof, but the old one stayed
    for the claims bucket's TTL (a day) and the masters counted it all that time. A proof now
    counts only while fresh (two of the agent's refreshes missed: a quarter of the TTL each, at
    most an hour). Here the TTL is 12 s (refresh 3 s): a2's proof, written 9.5 s ago while its
    credential still gave it tag web (the master's login writes it here), is still in the
    bucket but no longer counts; a1, whose credential gives web, keeps proving it."""
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    storage = StorageSettings(claims_max_age=12.0)
    async with MasterService(secured.settings("natsched-master"), storage=storage) as master:
        assert master.nc is not None
        claims = await open_claims(master.nc.jetstream())
        await claims.put(subjects.tag_member_key(TAG, "a2"), encode_membership("a2", TAG, "tag"))
        await asyncio.sleep(9.5)
        assert await has_key(claims, subjects.tag_member_key(TAG, "a2"))
        agents = [
            AgentService(
                AgentConfig(
                    name=name, pools=frozenset(), tags=frozenset({TAG}), state_dir=tmp_path / name,
                    heartbeat_interval=0.3,
                ),
                secured.settings(f"agent-{name}"),
            )
            for name in ("a1", "a2")
        ]  # fmt: skip
        async with agents[0], agents[1], AdminClient(secured.settings("natsched-admin")) as admin:
            for agent in agents:
                await agent.synced(10)
            spec = job("each", mode="slave", targets={"tags": [TAG]}, command=append)
            content = toml_jobs(spec, group="sec")
            assert (await admin.call(subjects.API_APPLY, {"source": "sec.toml", "content": content}))["ok"]
            directory = master.dispatcher.directory if master.dispatcher else None
            assert directory is not None

            async def both_seen() -> bool:
                return all(directory.get(name) is not None for name in ("a1", "a2")) and bool(
                    (seen := directory.get("a1")) and seen.tags
                )

            await eventually(both_seen, 10, "the master sees a1 (with its tag) and a2")
            answer = await admin.call(f"{subjects.TRIGGER_PREFIX}.sec.each", {})
            assert answer["ok"], answer
            await eventually(lambda: has_lines(witness, 1), 10, "a1 ran the trigger")
            await asyncio.sleep(1.0)  # a run sent to a2 would have started by now
    ran_on = sorted(line.split()[1] for line in file_lines(witness))
    assert ran_on == ["a1"], ran_on
