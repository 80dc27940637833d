"""A load-balance run an agent took from its pool's queue group counts as that agent's run,
also before the master has seen the agent's membership key.

Masters count a pool in a heartbeat only once the agent's ``member.<pool>.<agent>`` key is
read (a start-up of agents before the master's buckets, a key written late); meanwhile the
pool's runs go through its queue group, where the run's pool claim, written only by a
credential of the pool, proves who took it. Chains and retries asked only the heartbeat: the
completion was ignored ("the job does not target that agent") and the chain hop was lost
(seen in bench.chaos at start-up).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from natsched import subjects
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.faults.witness import WITNESS_LINE, executions, seen_by
from tests.helpers import apply, job, toml_jobs
from tests.master.test_chains import on, trigger


async def test_a_pool_run_of_an_agent_not_yet_proven_a_member_starts_its_chain(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    async with MasterService(conn):
        pass  # the buckets exist now
    await start_agent("p1", pools=frozenset({"p"}))
    claims = await nc.jetstream().key_value(subjects.CLAIMS_BUCKET)
    await claims.delete(subjects.pool_member_key("p", "p1"))  # as if not written yet
    up = job("up", mode="load-balance", targets={"pools": ["p"]}, command=["true"])
    down = on("p1", "down", triggers=[{"after": ["up"]}])
    down["command"] = ["sh", "-c", WITNESS_LINE.format(path=witness)]
    async with MasterService(conn) as master:  # a master that never saw the key
        await seen_by(master, "p1", proven=False)
        assert (await apply(nc, toml_jobs(up, down, group="pp")))["ok"]
        [run] = (await trigger(nc, "pp.up"))["runs"]
        assert run["agent"] == "p1", run  # through the pool's queue group

        async def ran() -> bool:
            return bool(executions(witness))

        await eventually(ran, 10, "the chain went on from p1's completion")
        await asyncio.sleep(0.5)
    assert len(executions(witness)) == 1


async def test_a_member_whose_key_this_master_read_as_missing_is_read_again_for_its_completion(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory
) -> None:
    """Masters share the chains' consumer: the master handling a completion may have read the
    agent's membership key as missing a moment before another master, reading it present,
    sent the run by name (seen in CI's chaos run at start-up: a chain hop missed). No pool
    claim then; the key itself, read again, proves the agent."""
    async with MasterService(conn):
        pass  # the buckets exist now
    await start_agent("p2", pools=frozenset({"p"}))
    claims = await nc.jetstream().key_value(subjects.CLAIMS_BUCKET)
    member = (await claims.get(subjects.pool_member_key("p", "p2"))).value
    await claims.delete(subjects.pool_member_key("p", "p2"))
    up = job("up", mode="load-balance", targets={"pools": ["p"]}, command=["true"])
    async with MasterService(conn) as master:
        await seen_by(master, "p2", proven=False)
        assert (await apply(nc, toml_jobs(up, group="pq")))["ok"]
        assert master.dispatcher is not None and master.index is not None
        directory, spec = master.dispatcher.directory, master.index.spec("pq.up")
        assert not await directory.took(spec, "p2", "run-x")  # no key, no pool claim: not p2's
        await claims.put(subjects.pool_member_key("p", "p2"), member or b"")  # written now
        assert await directory.took(spec, "p2", "run-x")  # read again at once, not in 2 s
        assert not await directory.took(spec, "p3", "run-x")  # no key: still nobody's
