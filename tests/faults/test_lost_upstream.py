"""A chain waits for the re-dispatch of a lost upstream run, as it waits for a retry.

A run of a ``redispatch_lost`` job whose agent died is recorded ``lost`` and started again on
another agent (``trigger = "lost"``, the same chain). The chains took the ``lost`` for the
upstream's completion: a job following it ``on = "completed"`` ran twice for one upstream run
(after the lost one, and after its re-run), and one that waits for all of several upstreams to
succeed failed its chain although the re-run succeeded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.claims import open_claims
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import (
    events_of,
    executions,
    lost_job,
    pool_pair,
    recorded,
    seen_by,
    started_on,
    witness_job,
)
from tests.helpers import apply, job, started_master, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults


async def test_a_chain_follows_the_re_run_of_a_lost_upstream_not_its_loss(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness, seconds, after = tmp_path / "witness", tmp_path / "seconds", tmp_path / "after"
    seconds.write_text("30")
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0))
    try:
        await seen_by(master, "a1", "b1")
        jobs = toml_jobs(
            lost_job("up", witness, seconds),
            witness_job(
                "down", after, mode="slave", targets={"agents": ["b1"]},
                triggers=[{"after": ["up"], "on": "completed"}],
            ),
            job(
                "both", mode="slave", targets={"agents": ["b1"]}, command=["true"],
                triggers=[{"after": ["up", "down"], "wait": "all", "timeout": 60}],
            ),
            group="lu",
        )  # fmt: skip
        assert (await apply(nc, jobs))["ok"]
        [run] = (await trigger(nc, "lu.up"))["runs"]
        assert run["agent"] == "a1", run
        await eventually(lambda: started_on(witness, "a1"), 10, "the upstream run executing on a1")
        seconds.write_text("0.2")
        a1.kill()  # lost 2 s later, and started again on b1
        await eventually(lambda: recorded(nc, "lu.up", run["run_id"], "lost"), 15, "the run recorded lost")
        await eventually(lambda: _ran(witness, "b1"), 15, "the lost run ran again on b1")
        await eventually(lambda: _count(after, 1), 10, "the chain went on after the re-run")
        await eventually(lambda: _succeeded(nc, "lu.both"), 10, "the fan-in ran")
        await asyncio.sleep(2.0)  # a second run of down would have started by now
        both = [e["state"] for e in await events_of(nc, "lu.both")]
    finally:
        await master.__aexit__(None, None, None)
    assert len(executions(after)) == 1, executions(after)
    assert "failed" not in both, both


async def _ran(witness: Path, agent: str) -> bool:
    return any(line[1:] == (agent, "end") for line in executions(witness))


async def _count(path: Path, n: int) -> bool:
    return len(executions(path)) >= n


async def _succeeded(nc: Client, key: str) -> bool:
    return any(e["state"] == "succeeded" for e in await events_of(nc, key))


async def test_a_chain_follows_the_loss_of_an_upstream_run_that_is_not_started_again(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """A lost run is started again only if its offer record says a master handed it to that
    agent (``offers.handed``); the record may be gone (the claims bucket's TTL outlived by a
    long run, or its write failed). Such a run is recorded lost and not run again: the chain
    then follows its loss, instead of waiting for a re-run that never comes."""
    witness, after = tmp_path / "witness", tmp_path / "after"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0))
    try:
        await seen_by(master, "a1", "b1")
        jobs = toml_jobs(
            lost_job("up", witness),
            witness_job(
                "down", after, mode="slave", targets={"agents": ["b1"]},
                triggers=[{"after": ["up"], "on": "completed"}],
            ),
            group="lx",
        )  # fmt: skip
        assert (await apply(nc, jobs))["ok"]
        [run] = (await trigger(nc, "lx.up"))["runs"]
        assert run["agent"] == "a1", run
        await eventually(lambda: started_on(witness, "a1"), 10, "the upstream run executing on a1")
        claims = await open_claims(nc.jetstream())
        await claims.delete(subjects.offer_key(run["run_id"]))  # as if it had expired
        # A master that did not hand the run itself (this one would know from a1's reply).
        await master.__aexit__(None, None, None)
        master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0))
        await seen_by(master, "a1", "b1")
        a1.kill()
        await eventually(lambda: recorded(nc, "lx.up", run["run_id"], "lost"), 15, "the run recorded lost")
        await eventually(lambda: _count(after, 1), 10, "the chain went on after the loss")
        await asyncio.sleep(1.5)  # a re-run of up (and a second down) would have started by now
    finally:
        await master.__aexit__(None, None, None)
    assert len(executions(after)) == 1, executions(after)
    assert [line[1] for line in executions(witness)] == ["a1"], executions(witness)
