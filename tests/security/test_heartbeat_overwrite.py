"""Attack: agent a3 stops agent a1 by having nats-server write over a1's heartbeat key.

a3 writes its own heartbeat with the reply subject ``$KV.natsched_agents.a1``: nats-server
stores its acknowledgement (``{"stream": …, "seq": …}``) as a1's heartbeat. a1's next heartbeat,
written only over its own last one (compare-and-set), found an unreadable value there, meant to
take it over, but did so with a create, which fails on a key that holds a value: three times,
then "agent name 'a1' keeps changing hands", and a1 stopped, its running jobs killed with it.
One message of another agent's credential; every restart of a1 met the same until the value
expired.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.client import AdminClient
from natsched.errors import CodecError
from tests.conftest import eventually
from tests.helpers import file_lines, job, toml_jobs
from tests.security.hostile import Secured


async def test_an_agent_cannot_stop_another_by_overwriting_its_heartbeat(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        spec = job("on", mode="slave", targets={"agents": ["a1"]}, command=append)
        reply = await admin.call(
            subjects.API_APPLY, {"source": "sec.toml", "content": toml_jobs(spec, group="sec")}
        )
        assert reply["ok"], reply
        a3 = await secured.connect("agent-a3")
        agents = await a3.jetstream().key_value(subjects.AGENTS_BUCKET)
        prefix = subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)
        await a3.publish(f"{prefix}a3", b"x", reply=f"{prefix}a1")
        await a3.flush()
        await eventually(lambda: _unreadable(agents, "a1"), 5, "nats-server wrote over a1's heartbeat")
        overwritten = time.time()

        async def heartbeating() -> bool:
            heartbeat = await _heartbeat(agents, "a1")
            return heartbeat is not None and heartbeat > overwritten

        await eventually(heartbeating, 5, "a1 heartbeats again")
        await asyncio.sleep(1.0)  # a1 stopped would have stopped heartbeating by now
        latest = await _heartbeat(agents, "a1")
        assert latest is not None and latest > time.time() - 1.0, "a1 heartbeats on"
        started = json.loads(
            (await admin.nc.request(subjects.trigger_subject("sec.on"), b"{}", timeout=10)).data
        )
        assert started["ok"] and started["runs"][0]["ok"], started
        await eventually(lambda: _ran(witness), 10, "the run happened on a1")


async def _unreadable(kv: KeyValue, agent: str) -> bool:
    try:
        codec.decode_heartbeat((await kv.get(agent)).value or b"", agent)
    except CodecError:
        return True
    except KeyNotFoundError:
        return False
    return False


async def _heartbeat(kv: KeyValue, agent: str) -> float | None:
    """When ``agent``'s heartbeat on record was sent (None: none, or not readable)."""
    try:
        return codec.decode_heartbeat((await kv.get(agent)).value or b"", agent).sent_at
    except (CodecError, KeyNotFoundError):
        return None


async def _ran(witness: Path) -> bool:
    return [line.split()[1] for line in file_lines(witness)] == ["a1"]
