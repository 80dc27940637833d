"""Chains across hosts: completion events start downstream jobs on other agents.

Agents named db1, db2, web1 stand for different hosts; jobs are triggered by a raw NATS
request on ``natsched.trigger.<job>`` and followed through the events stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.cli.test_commands import natsched
from tests.conftest import AgentFactory, Process, eventually, wait_for_api
from tests.helpers import api, apply, job, stream_events, toml_jobs


async def trigger(nc: Client, name: str) -> dict[str, Any]:
    msg = await nc.request(f"natsched.trigger.{name}", b"{}", timeout=15)
    reply: dict[str, Any] = json.loads(msg.data)
    assert reply["ok"], reply
    return reply


def on(agent: str, name: str, seconds: float = 0, **fields: Any) -> dict[str, Any]:
    """A slave job on one agent that sleeps ``seconds`` then exits with ``exit`` (default 0)."""
    code = fields.pop("exit", 0)
    return job(
        name,
        mode="slave",
        targets={"agents": [agent]},
        command=["sh", "-c", f"sleep {seconds}; exit {code}"],
        **fields,
    )


async def finals(nc: Client, key: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key and e["state"] not in ("started", "queued")]


async def until_finals(nc: Client, key: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len(await finals(nc, key)) >= count

    await eventually(enough, timeout, f"{count} final event(s) of {key}")
    return await finals(nc, key)


async def three_hosts(start_agent: AgentFactory) -> None:
    for name in ("db1", "db2", "web1"):
        await start_agent(name)


async def test_completion_on_one_host_starts_the_next_job_on_another(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await three_hosts(start_agent)
    await apply(
        nc,
        toml_jobs(
            on("db1", "backup"),
            on("db2", "verify", triggers=[{"after": ["backup"]}]),
            group="c",
        ),
    )
    root = (await trigger(nc, "c.backup"))["runs"][0]["run_id"]
    [verify] = await until_finals(nc, "c.verify", 1)
    assert verify["state"] == "succeeded" and verify["agent"] == "db2" and verify["trigger"] == "event"
    assert verify["detail"]["chain_id"] == root and verify["detail"]["parents"] == root
    await asyncio.sleep(1.0)
    assert len(await finals(nc, "c.verify")) == 1, "one completion, one downstream run"


async def test_fan_out_to_three(master: MasterService, nc: Client, start_agent: AgentFactory) -> None:
    await three_hosts(start_agent)
    await apply(
        nc,
        toml_jobs(
            on("db1", "extract"),
            *(
                on(agent, f"load-{agent}", triggers=[{"after": ["extract"]}])
                for agent in ("db1", "db2", "web1")
            ),
            group="fo",
        ),
    )
    root = (await trigger(nc, "fo.extract"))["runs"][0]["run_id"]
    ran = {}
    for agent in ("db1", "db2", "web1"):
        [event] = await until_finals(nc, f"fo.load-{agent}", 1)
        ran[agent] = event
    assert {a: e["agent"] for a, e in ran.items()} == {"db1": "db1", "db2": "db2", "web1": "web1"}
    assert all(e["detail"]["chain_id"] == root and e["state"] == "succeeded" for e in ran.values())


async def test_fan_in_of_two_fires_once_in_either_order(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await three_hosts(start_agent)

    def graph(verify_seconds: float, sizes_seconds: float) -> str:
        return toml_jobs(
            on("db1", "backup"),
            on("db2", "verify", verify_seconds, triggers=[{"after": ["backup"]}]),
            on("db1", "sizes", sizes_seconds, triggers=[{"after": ["backup"]}]),
            on("web1", "publish", triggers=[{"after": ["verify", "sizes"], "wait": "all"}]),
            group="fi",
        )

    chains = []
    for verify_s, sizes_s in ((0.1, 0.8), (0.8, 0.1)):  # verify first, then sizes first
        await apply(nc, graph(verify_s, sizes_s))
        chains.append((await trigger(nc, "fi.backup"))["runs"][0]["run_id"])
        await until_finals(nc, "fi.publish", len(chains))
    await asyncio.sleep(1.0)
    published = await finals(nc, "fi.publish")
    assert sorted(e["detail"]["chain_id"] for e in published) == sorted(chains), "once per chain run"
    ends = {e["run_id"]: e["ended_at"] for e in await stream_events(nc) if e.get("ended_at")}
    for event in published:
        assert event["agent"] == "web1" and event["state"] == "succeeded"
        parents = event["detail"]["parents"].split(",")
        assert len(parents) == 2, "both upstream runs are its parents"
        assert event["started_at"] >= max(ends[p] for p in parents), "started after both completed"


async def test_fan_in_timeout_fails_the_chain_with_a_reason(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await three_hosts(start_agent)
    await apply(
        nc,
        toml_jobs(
            on("db1", "root"),
            on("db1", "quick", triggers=[{"after": ["root"]}]),
            on("db2", "slow", 30, triggers=[{"after": ["root"]}]),
            on("web1", "join", triggers=[{"after": ["quick", "slow"], "wait": "all", "timeout": "1s"}]),
            group="ft",
        ),
    )
    root = (await trigger(nc, "ft.root"))["runs"][0]["run_id"]
    [failed] = await until_finals(nc, "ft.join", 1)
    assert failed["state"] == "failed" and failed["detail"]["chain_id"] == root
    assert failed["reason"] == "chain failed: fan-in timed out after 1s waiting for ft.slow"
    started = [e for e in await stream_events(nc) if e["job"] == "ft.join" and e["state"] == "started"]
    assert not started, "the joined job never ran"


async def test_failure_branch_runs_on_failure_only(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await three_hosts(start_agent)

    def graph(code: int) -> str:
        return toml_jobs(
            on("db1", "work", exit=code),
            on("db2", "cleanup", triggers=[{"after": ["work"], "on": "failed"}]),
            on("web1", "report", triggers=[{"after": ["work"]}]),
            on("web1", "code3", triggers=[{"after": ["work"], "on": "completed", "exit_codes": [3]}]),
            group="fb",
        )

    await apply(nc, graph(3))
    await trigger(nc, "fb.work")
    [cleanup] = await until_finals(nc, "fb.cleanup", 1)
    [code3] = await until_finals(nc, "fb.code3", 1)
    assert cleanup["agent"] == "db2" and code3["agent"] == "web1"
    await apply(nc, graph(0))
    await trigger(nc, "fb.work")
    await until_finals(nc, "fb.report", 1)
    await asyncio.sleep(1.0)
    assert len(await finals(nc, "fb.cleanup")) == 1, "a success does not run the failure branch"
    assert len(await finals(nc, "fb.code3")) == 1, "exit code 0 is not in [3]"


async def test_slave_upstream_completes_when_all_targets_did(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await three_hosts(start_agent)
    await apply(
        nc,
        toml_jobs(
            job("everywhere", mode="slave", targets={"agents": ["db1", "db2"]}, command=["true"]),
            on("web1", "after-all", triggers=[{"after": ["everywhere"]}]),
            on("web1", "each", triggers=[{"after": ["everywhere"], "per_agent": True}]),
            group="sb",
        ),
    )
    await trigger(nc, "sb.everywhere")
    [after_all] = await until_finals(nc, "sb.after-all", 1)
    await until_finals(nc, "sb.each", 2)
    await asyncio.sleep(1.0)
    assert len(await finals(nc, "sb.after-all")) == 1
    assert len(after_all["detail"]["parents"].split(",")) == 2
    assert len(await finals(nc, "sb.each")) == 2


async def test_apply_rejects_cycles_unknown_upstreams_and_impossible_fan_in(
    master: MasterService, nc: Client
) -> None:
    cases = [
        (
            toml_jobs(
                on("db1", "a", triggers=[{"after": ["c"]}]),
                on("db1", "b", triggers=[{"after": ["a"]}]),
                on("db1", "c", triggers=[{"after": ["b"]}]),
                group="cy",
            ),
            "cycle: cy.a -> cy.b -> cy.c -> cy.a",
        ),
        (
            toml_jobs(on("db1", "orphan", triggers=[{"after": ["ghost"]}]), group="cy"),
            "'cy.ghost', which is not a job",
        ),
        (
            toml_jobs(
                on("db1", "x"),
                on("db1", "y"),
                on("db1", "z", triggers=[{"after": ["x", "y"], "wait": "all"}]),
                group="cy",
            ),
            "can never fire",
        ),
        (
            toml_jobs(
                on("db1", "p"), on("db1", "q", triggers=[{"after": ["p"], "exit_codes": [2]}]), group="cy"
            ),
            "can never fire",
        ),
    ]
    for content, message in cases:
        reply = await api(nc, subjects.API_APPLY, {"source": "chain.toml", "content": content})
        said = " ".join([reply["error"], *reply.get("errors", [])])
        assert reply["ok"] is False and message in said, reply
        assert "chain.toml" in said
    listed = await api(nc, subjects.API_JOBS_LIST, {})
    assert not [j for j in listed["jobs"] if j["key"].startswith("cy.")], "nothing was written"


async def test_an_upstream_cannot_be_deleted_under_its_downstream(master: MasterService, nc: Client) -> None:
    await apply(nc, toml_jobs(on("db1", "up"), on("db1", "down", triggers=[{"after": ["up"]}]), group="del"))
    reply = await api(nc, subjects.API_JOBS_DELETE, {"jobs": ["del.up"]})
    assert reply["ok"] is False and "upstream of del.down" in reply["error"]
    reply = await api(nc, subjects.API_JOBS_DELETE, {"jobs": ["del.up", "del.down"]})
    assert reply["ok"], reply


async def test_master_killed_before_the_downstream_dispatch_runs_it_exactly_once_after_restart(
    master_process: Process,
    spawn: Callable[..., Process],
    nats_server: EmbeddedServer,
    nc: Client,
    start_agent: AgentFactory,
) -> None:
    await three_hosts(start_agent)
    await apply(
        nc,
        toml_jobs(
            on("db1", "upstream", 1.5),
            on("db2", "downstream", triggers=[{"after": ["upstream"]}]),
            group="mk",
        ),
    )
    root = (await trigger(nc, "mk.upstream"))["runs"][0]["run_id"]
    master_process.kill()  # kill -9 while the upstream runs: nobody follows its completion
    await until_finals(nc, "mk.upstream", 1)
    await asyncio.sleep(0.5)
    assert await finals(nc, "mk.downstream") == [], "no master, no dispatch yet"

    restarted = spawn("natsched", "master", url=nats_server.url, log_name="master-2.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, restarted)
    [downstream] = await until_finals(nc, "mk.downstream", 1)
    assert downstream["detail"]["chain_id"] == root and downstream["agent"] == "db2"

    restarted.kill()  # and once more: the acknowledged completion is not handled again
    again = spawn("natsched", "master", url=nats_server.url, log_name="master-3.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, again)
    await asyncio.sleep(2.0)
    runs = [e for e in await stream_events(nc) if e["job"] == "mk.downstream" and e["state"] == "started"]
    assert len(runs) == 1, runs


async def test_runs_chain_shows_the_tree_and_the_chain_state(
    master: MasterService, nats_server: EmbeddedServer, nc: Client, start_agent: AgentFactory
) -> None:
    await three_hosts(start_agent)

    def graph(with_cleanup: bool) -> str:
        steps = [
            on("db1", "backup"),
            on("db2", "verify", exit=2, triggers=[{"after": ["backup"]}]),
        ]
        if with_cleanup:
            steps.append(on("web1", "cleanup", triggers=[{"after": ["verify"], "on": "failed"}]))
        return toml_jobs(*steps, group="tree")

    async def chain(chain_id: str) -> dict[str, Any]:
        code, out = await asyncio.to_thread(
            natsched, "runs", "--chain", chain_id, "--json", url=nats_server.url
        )
        assert code == 0, out
        view: dict[str, Any] = json.loads(out)
        return view

    await apply(nc, graph(with_cleanup=True))
    handled = (await trigger(nc, "tree.backup"))["runs"][0]["run_id"]
    await until_finals(nc, "tree.cleanup", 1)
    view = await chain(handled)
    steps = {s["job"]: s for s in view["runs"]}
    assert view["state"] == "succeeded", "the failure was handled by its branch"
    assert [
        (steps[j]["agent"], steps[j]["state"]) for j in ("tree.backup", "tree.verify", "tree.cleanup")
    ] == [
        ("db1", "succeeded"),
        ("db2", "failed"),
        ("web1", "succeeded"),
    ]
    assert steps["tree.cleanup"]["parents"] == [steps["tree.verify"]["run_id"]]
    code, out = await asyncio.to_thread(natsched, "runs", "--chain", handled, url=nats_server.url)
    assert code == 0 and f"chain {handled}: succeeded" in out
    assert "tree.verify on db2: failed" in out and "exit 2" in out

    await apply(nc, graph(with_cleanup=False), prune=True)
    unhandled = (await trigger(nc, "tree.backup"))["runs"][0]["run_id"]
    await until_finals(nc, "tree.verify", 2)
    assert (await chain(unhandled))["state"] == "failed"
    code, out = await asyncio.to_thread(
        natsched, "runs", "--chain", "18c0ffee000-nosuchchain", url=nats_server.url
    )
    assert code != 0 and "no chain run" in out


async def test_a_raw_publish_on_an_operator_subject_starts_the_job_with_its_body(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    echo = ["sh", "-c", 'printf "%s|%s" "$NATSCHED_SUBJECT" "$NATSCHED_MESSAGE"']
    await apply(
        nc,
        toml_jobs(
            job(
                "on-order",
                mode="slave",
                targets={"agents": ["web1"]},
                command=echo,
                triggers=[{"subject": "orders.*"}],
            ),
            job(
                "on-paid",
                mode="slave",
                targets={"agents": ["web1"]},
                command=echo,
                triggers=[
                    {
                        "subject": "payments.>",
                        "match": {"status": "paid", "order.region": "eu"},
                        "max_bytes": 200,
                    }
                ],
            ),
            group="ext",
        ),
    )

    async def listening() -> bool:
        assert master.inbound is not None
        return {"orders.*", "payments.>"} <= set(master.inbound.stream.subjects)

    await eventually(listening, 10, "master subscribed to the job subjects")
    # What any NATS client does: a plain publish, no natsched code.
    await nc.publish("orders.created", b'{"id": 7}')
    await nc.publish("payments.in", json.dumps({"status": "paid", "order": {"region": "eu"}}).encode())
    await nc.publish("payments.in", json.dumps({"status": "refused", "order": {"region": "eu"}}).encode())
    await nc.publish("payments.in", b"not json")
    await nc.publish("payments.in", json.dumps({"status": "paid", "pad": "x" * 300}).encode())
    [order] = await until_finals(nc, "ext.on-order", 1)
    assert order["output_tail"] == 'orders.created|{"id": 7}' and order["trigger"] == "subject"
    [paid] = await until_finals(nc, "ext.on-paid", 1)
    assert json.loads(paid["output_tail"].split("|", 1)[1])["status"] == "paid"
    await asyncio.sleep(1.0)
    assert len(await finals(nc, "ext.on-paid")) == 1, "refused, non-JSON and oversized bodies start nothing"


async def test_a_downstream_job_whose_agent_does_not_answer_holds_back_no_other(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    """Fan-out dispatches every downstream job at once: "slow" takes the run request and does
    not answer (the master waits up to its 5 s dispatch timeout), and "fast" runs meanwhile."""
    await three_hosts(start_agent)
    held: asyncio.Queue[object] = asyncio.Queue()
    await nc.subscribe(subjects.agent_run_subject("slow"), cb=held.put)
    first = [on("db1", "extract"), on("slow", "held", triggers=[{"after": ["extract"]}])]
    # Applied first, so that it is the first downstream job the master goes through.
    assert (await apply(nc, toml_jobs(*first, group="fo")))["ok"]
    fast = on("db2", "fast", triggers=[{"after": ["extract"]}])
    assert (await apply(nc, toml_jobs(*first, fast, group="fo")))["ok"]
    await trigger(nc, "fo.extract")
    [ran] = await until_finals(nc, "fo.fast", 1, timeout=3.5)  # well before the 5 s timeout
    assert ran["state"] == "succeeded" and ran["agent"] == "db2"
    assert held.qsize() == 1, "the held job's request went out, and was not answered yet"


async def test_a_subject_job_whose_agent_does_not_answer_holds_back_no_other(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    """One message starts every job listening on its subject at once, as fan-out does."""
    await start_agent("web1")
    held: asyncio.Queue[object] = asyncio.Queue()
    await nc.subscribe(subjects.agent_run_subject("slow"), cb=held.put)
    first = on("slow", "held", triggers=[{"subject": "orders.*"}])
    # Applied first, so that it is the first job of the subject the master goes through.
    assert (await apply(nc, toml_jobs(first, group="ext")))["ok"]
    fast = on("web1", "fast", triggers=[{"subject": "orders.*"}])
    assert (await apply(nc, toml_jobs(first, fast, group="ext")))["ok"]

    async def listening() -> bool:
        assert master.inbound is not None and master.index is not None
        return "orders.*" in master.inbound.stream.subjects and "ext.fast" in master.index.jobs

    await eventually(listening, 10, "master follows orders.* for both jobs")
    await nc.publish("orders.created", b"{}")
    [ran] = await until_finals(nc, "ext.fast", 1, timeout=3.5)  # well before the 5 s timeout
    assert ran["state"] == "succeeded" and ran["agent"] == "web1"
    assert held.qsize() == 1, "the held job's request went out, and was not answered yet"
