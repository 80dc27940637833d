"""A pool member cannot have made-up runs started again when another member, or itself, is lost.

A lost agent's open runs of a ``redispatch_lost`` job were started again when the agent was
a proven member of the job's pool. But what names those runs is the agent's word (its
heartbeat, its events, its claims), and pool claims (``pool.<pool>.<run_id>``) are written by
any member of the pool: member b1 wrote pool claims of made-up runs naming a1 as holder (and
a claim of its own under ``agent.b1.*``), and each time a1 or b1 was lost, every one of them
ran again. A lost run is now started again only if a master handed it to that agent: the
offer record every load-balance dispatch writes (``offer.<run_id>``, which agents cannot
write) names that agent's claim of it. Real runs still run again, once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.buckets import StorageSettings
from natsched.claims import Claim, ClaimedRun, encode_claim, open_claims
from natsched.embedded import EmbeddedServer
from natsched.events import new_run_id
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import Process, eventually
from tests.faults.witness import (
    agent_process,
    lost_job,
    pool_pair,
    recorded,
    run_on_a1,
    seen_by,
    start_lines,
    started_on,
)
from tests.helpers import apply, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults


async def test_made_up_pool_claims_are_recorded_but_never_run_again(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0) as master:
        await seen_by(master, "a1", "b1")
        spec = lost_job("long", witness)
        real = await run_on_a1(nc, spec, "fp")
        await eventually(lambda: started_on(witness, "a1"), 10, "the real run started on a1")

        # b1, a member of pool p, writes claims of three made-up runs of fp.long held by a1.
        claims = await open_claims(nc.jetstream())
        made_up = [new_run_id() for _ in range(3)]
        for run_id in made_up:
            run = ClaimedRun.of("fp.long", RunTrigger.MANUAL.value, None, 0, {}, at=time.time())
            forged = Claim(agent="a1", nonce=secrets.token_hex(8), run=run)
            await claims.create(subjects.pool_claim_key("p", run_id), encode_claim(forged))

        a1.kill()  # the real run dies with it (guardian)
        await eventually(lambda: recorded(nc, "fp.long", real["run_id"], "lost"), 15, "the real run lost")
        await eventually(lambda: started_on(witness, "b1"), 15, "the real run ran again on b1")

        async def all_lost() -> bool:  # on record as lost, as the claims naming a1 say, but not run
            return all([await recorded(nc, "fp.long", run_id, "lost") for run_id in made_up])

        await eventually(all_lost, 10, "the made-up runs recorded lost")
        await asyncio.sleep(2.0)  # a re-run of a made-up one would have started by now
    starts = start_lines(witness)
    assert [agent for _, agent, _ in starts] == ["a1", "b1"], starts
    assert starts[1][0] == f"{real['run_id']}-re", starts


async def test_a_run_taken_from_the_pool_queue_group_runs_again_once_when_its_taker_is_lost(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """The offer record of a run taken from the pool's queue group names the pool claim and the
    agent that answered the master (not the pool claim's holder, which any member may write):
    lost with that agent, the run is started again, once."""
    witness = tmp_path / "witness"
    url = nats_server.url
    # Both take only group "other" by name: runs of qg.long reach them through the queue group.
    agents = {
        name: agent_process(spawn, url, name, tmp_path / name, "--pool", "p", "--group", "other")
        for name in ("a1", "b1")
    }
    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0) as master:
        await seen_by(master, "a1", "b1")
        spec = lost_job("long", witness)
        assert (await apply(nc, toml_jobs(spec, group="qg")))["ok"]
        [run] = (await trigger(nc, "qg.long"))["runs"]
        taker = run["agent"]
        other = "b1" if taker == "a1" else "a1"
        await eventually(lambda: started_on(witness, taker), 10, "the run started on its taker")
    # The next master did not hear the taker's answer: only the offer record says who took it.
    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0) as master:
        await seen_by(master, "a1", "b1")
        agents[taker].kill()
        await eventually(lambda: recorded(nc, "qg.long", run["run_id"], "lost"), 15, "the run lost")
        await eventually(lambda: started_on(witness, other), 15, "the run ran again on the other member")
        await asyncio.sleep(1.0)
    starts = start_lines(witness)
    assert [(r, agent) for r, agent, _ in starts] == [
        (run["run_id"], taker),
        (f"{run['run_id']}-re", other),
    ], starts


async def test_a_run_longer_than_the_claims_ttl_still_runs_again_when_lost(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """The offer record is the masters' word that a run went to its agent, and it lived as long
    as the claims bucket keeps keys (a day): a run going on longer was, once its agent was
    lost, recorded lost and not started again. The leader now rewrites the record of each run
    still going on (offers.keep_offers). Here the TTL is 4 s and the run is lost after 7."""
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)

    def master() -> MasterService:
        storage = StorageSettings(claims_max_age=4.0)
        return MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0, storage=storage)

    async with master() as first:
        await seen_by(first, "a1", "b1")
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "kt")
        await eventually(lambda: started_on(witness, "a1"), 10, "the run started on a1")
    # The next master did not hear a1's answer: only the offer record says a1 had the run.
    async with master() as second:
        await seen_by(second, "a1", "b1")
        await asyncio.sleep(7.0)  # the record outlived the TTL only if it was kept
        a1.kill()
        await eventually(lambda: recorded(nc, "kt.long", run["run_id"], "lost"), 15, "the run lost")
        await eventually(lambda: started_on(witness, "b1"), 10, "the run ran again on b1")
    starts = start_lines(witness)
    assert [agent for _, agent, _ in starts] == ["a1", "b1"], starts
