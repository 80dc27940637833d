"""Slave and load-balance dispatch, external triggers, master scheduling, cancel."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from agent.service import AgentService
from natsched import codec, subjects
from natsched.master.service import MasterService
from natsched.models import Heartbeat
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs


async def trigger(nc: Client, job_name: str, body: dict[str, Any] | bytes | None = None) -> dict[str, Any]:
    """What any NATS client does: a JSON request on natsched.trigger.<job> (no natsched code)."""
    data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    msg = await nc.request(f"natsched.trigger.{job_name}", data, timeout=15)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def finals(nc: Client, key: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key and e["state"] not in ("started", "queued")]


async def test_slave_runs_on_every_target_and_offline_one_is_recorded(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    agents = [await start_agent(n) for n in ("a1", "a2", "a3")]
    await apply(
        nc,
        toml_jobs(
            job(
                "hello",
                mode="slave",
                command=["sh", "-c", "echo $NATSCHED_AGENT $1", "x"],
                targets={"agents": ["a1", "a2", "a3"]},
                trigger={"args": True},  # the caller's args are appended (the job allows it)
            ),
            group="s",
        ),
    )
    reply = await trigger(nc, "s.hello", {"args": ["arg1"], "correlation_id": "c-42"})
    assert reply["ok"] and sorted(r["agent"] for r in reply["runs"]) == ["a1", "a2", "a3"]
    assert all(r["ok"] and r["pid"] for r in reply["runs"])

    async def three_done() -> bool:
        return len([e for e in await finals(nc, "s.hello") if e["state"] == "succeeded"]) == 3

    await eventually(three_done, 10)
    outputs = sorted(e["output_tail"] for e in await finals(nc, "s.hello"))
    assert outputs == ["a1 arg1\n", "a2 arg1\n", "a3 arg1\n"]
    assert all(e["detail"]["correlation_id"] == "c-42" for e in await finals(nc, "s.hello"))

    await agents[2].__aexit__(None, None, None)  # a3 goes away (the fixture skips a stopped agent twice)
    reply = await trigger(nc, "hello")  # a bare name works when unique
    by_agent = {r["agent"]: r for r in reply["runs"]}
    assert by_agent["a3"]["ok"] is False and "agent offline" in by_agent["a3"]["reason"]
    assert by_agent["a1"]["ok"] and by_agent["a2"]["ok"]
    offline = [e for e in await finals(nc, "s.hello") if e["agent"] == "a3" and e["state"] == "failed"]
    assert offline and offline[0]["reason"] == "agent offline"


async def test_bad_triggers_get_error_replies_and_run_nothing(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("a1")
    await apply(nc, toml_jobs(job("x", mode="slave"), job("off", mode="slave", enabled=False), group="t"))
    cases: list[tuple[str, dict[str, Any] | bytes, str]] = [
        ("t.nope", {}, "no job"),
        ("t.x", b"{not json", "not valid JSON"),
        ("t.x", {"args": "notalist"}, "'args'"),
        ("t.x", {"env": {"A": 1}}, "'env'"),
        ("t.x", {"bogus": 1}, "unknown field"),
        ("t.off", {}, "disabled"),
    ]
    for name, body, words in cases:
        reply = await trigger(nc, name, body)
        assert reply["ok"] is False and words in reply["error"], (name, reply)
    await asyncio.sleep(0.3)
    assert await stream_events(nc) == []


async def _set_heartbeat(nc: Client, master: MasterService, agent: AgentService, **values: Any) -> None:
    """Put a heartbeat with these figures and wait until the master's directory shows it."""
    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
    current = codec.decode_heartbeat((await kv.get(agent.config.name)).value or b"", agent.config.name)
    fields = {**{k: getattr(current, k) for k in Heartbeat.__dataclass_fields__}, **values}
    expected = Heartbeat(**fields)
    await kv.put(agent.config.name, codec.encode_heartbeat(expected))
    assert master.dispatcher is not None
    directory = master.dispatcher.directory

    async def seen() -> bool:
        return directory.get(agent.config.name) == expected

    await eventually(seen, 10, f"master sees the heartbeat of {agent.config.name}")


async def test_load_balance_priority_load_busy_and_failover(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    # Heartbeats every 60 s: the test sets the load figures the master sees.
    lb = {"pools": frozenset({"p"}), "heartbeat_interval": 60}
    a1 = await start_agent("a1", priority=2, **lb)
    a2 = await start_agent("a2", priority=1, **lb)
    a3 = await start_agent("a3", priority=3, max_concurrency=1, **lb)
    await apply(
        nc,
        toml_jobs(
            job("prio", mode="load-balance", targets={"pools": ["p"]}, command=["sleep", "0.1"]),
            job(
                "least",
                mode="load-balance",
                balance="load",
                targets={"pools": ["p"]},
                command=["sleep", "0.1"],
            ),
            job(
                "ordered",
                mode="load-balance",
                targets={"pools": ["p"], "agents": ["a3", "a1"]},
                command=["sleep", "3"],
            ),
            group="lb",
        ),
    )

    async def chosen(name: str) -> str:
        reply = await trigger(nc, f"lb.{name}")
        assert reply["ok"] and len(reply["runs"]) == 1, reply
        return str(reply["runs"][0]["agent"])

    assert await chosen("prio") == "a2"  # lowest priority number
    await _set_heartbeat(nc, master, a1, load1=0.1)
    await _set_heartbeat(nc, master, a2, load1=3.0)
    await _set_heartbeat(nc, master, a3, load1=1.0)
    assert await chosen("least") == "a1"  # least loaded
    assert await chosen("ordered") == "a3"  # the job's failover list comes first
    # a3 is full now (max_concurrency 1; its heartbeat still says idle): it refuses, a1 takes it.
    assert await chosen("ordered") == "a1"
    await a1.__aexit__(None, None, None)  # stopped, but its heartbeat is still in the bucket
    await eventually(lambda: _idle(a3), 10)
    await _set_heartbeat(nc, master, a3, running=1)  # now the master skips a3 without asking
    assert await chosen("ordered") == "a2"  # a1 is unreachable: next one
    del a2


async def _idle(agent: AgentService) -> bool:
    return agent.running == 0


async def test_master_fires_slave_slots_once_even_with_two_masters(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory
) -> None:
    async with MasterService(conn) as first, MasterService(conn) as second:
        await start_agent("a1")
        await start_agent("a2")
        await apply(
            nc,
            toml_jobs(
                job("tick", mode="slave", triggers=[{"cron": "* * * * * *"}], targets={"agents": ["*"]}),
                group="ms",
            ),
        )
        await asyncio.sleep(4.5)
        fired = (
            first.scheduler.fired if first.scheduler else 0,
            second.scheduler.fired if second.scheduler else 0,
        )
    runs = [e for e in await stream_events(nc) if e["job"] == "ms.tick" and e["state"] == "started"]
    per_slot = collections.Counter((e["agent"], e["scheduled_at"]) for e in runs)
    assert len({slot for _, slot in per_slot}) >= 3, "slots fired"
    assert max(per_slot.values()) == 1, "a slot dispatched twice"
    assert {agent for agent, _ in per_slot} == {"a1", "a2"}
    assert sum(fired) == len({slot for _, slot in per_slot})


async def test_cancel_kills_a_running_process(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("a1")
    await apply(nc, toml_jobs(job("long", mode="slave", command=["sleep", "30"]), group="c"))
    run_id = (await trigger(nc, "c.long"))["runs"][0]["run_id"]
    await eventually(lambda: _has_state(nc, run_id, "started"), 10)
    reply = await api(nc, subjects.API_RUNS_CANCEL, {"run_id": run_id})
    assert reply["ok"], reply
    await eventually(lambda: _has_state(nc, run_id, "killed"), 10)
    again = await api(nc, subjects.API_RUNS_CANCEL, {"run_id": run_id})
    assert again["ok"] is False and "already ended" in again["error"]


async def _has_state(nc: Client, run_id: str, state: str) -> bool:
    return any(e["run_id"] == run_id and e["state"] == state for e in await stream_events(nc))


async def test_retries_back_off_and_go_to_another_agent(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Any
) -> None:
    marker = tmp_path / "fail-once"
    marker.write_text("")
    lb = {"pools": frozenset({"r"})}
    await start_agent("r1", priority=1, **lb)
    await start_agent("r2", priority=2, **lb)
    # Fails while the marker exists (removing it), so the second attempt succeeds.
    script = f"if [ -e {marker} ]; then rm {marker}; exit 9; fi; echo ok"
    await apply(
        nc,
        toml_jobs(
            job(
                "flaky",
                mode="load-balance",
                targets={"pools": ["r"]},
                command=script,
                shell=True,
                retries={"attempts": 2, "backoff": 0.5, "jitter": 0},
            ),
            job(
                "hopeless",
                mode="slave",
                targets={"agents": ["r1"]},
                command=["false"],
                retries={"attempts": 2, "backoff": 0.2, "jitter": 0},
            ),
            group="rt",
        ),
    )
    first = (await trigger(nc, "rt.flaky"))["runs"][0]
    assert first["agent"] == "r1"

    async def retried() -> bool:
        return any(e["state"] == "succeeded" for e in await finals(nc, "rt.flaky"))

    await eventually(retried, 15, "the retry succeeded")
    events = await finals(nc, "rt.flaky")
    failed = next(e for e in events if e["state"] == "failed")
    ok = next(e for e in events if e["state"] == "succeeded")
    assert failed["attempt"] == 1 and failed["exit_code"] == 9
    assert ok["attempt"] == 2 and ok["detail"]["retry_of"] == failed["run_id"] and ok["trigger"] == "retry"
    assert ok["agent"] == "r2", "a load-balance retry goes to another agent"
    started = {e["run_id"]: e for e in await stream_events(nc) if e["state"] == "started"}
    assert started[ok["run_id"]]["started_at"] - failed["ended_at"] >= 0.4  # waited for the backoff

    await trigger(nc, "rt.hopeless")

    async def gave_up() -> bool:
        return len(await finals(nc, "rt.hopeless")) == 3

    await eventually(gave_up, 15, "1 run + 2 retries")
    await asyncio.sleep(1.0)
    attempts = sorted(e["attempt"] for e in await finals(nc, "rt.hopeless"))
    assert attempts == [1, 2, 3], "exactly the configured retries, then it stops"
    assert {e["agent"] for e in await finals(nc, "rt.hopeless")} == {"r1"}


async def lock_released(nc: Client, key: str) -> bool:
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    try:
        await state.get(f"lock.{key}")
    except Exception:  # noqa: BLE001 - gone (deleted) is what we wait for
        return True
    return False


async def exclusive_pair(start_agent: AgentFactory) -> None:
    """o1 comes first by priority but takes one run at a time, so a second run goes to o2."""
    await start_agent("o1", pools=frozenset({"ov"}), priority=1, max_concurrency=1)
    await start_agent("o2", pools=frozenset({"ov"}), priority=2)


def exclusive_job(name: str, overlap: str, seconds: float) -> str:
    return toml_jobs(
        job(
            name,
            mode="load-balance",
            targets={"pools": ["ov"]},
            command=["sleep", str(seconds)],
            overlap=overlap,
        ),
        group="ov",
    )


async def test_forbid_overlap_holds_across_agents(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await exclusive_pair(start_agent)
    await apply(nc, exclusive_job("exclusive", "forbid", 1))
    first = (await trigger(nc, "ov.exclusive"))["runs"][0]
    second = (await trigger(nc, "ov.exclusive"))["runs"][0]
    assert (first["agent"], first["state"]) == ("o1", "started"), first
    assert (second["agent"], second["state"]) == ("o2", "skipped"), second
    assert f"{first['run_id']} on o1" in second["reason"]

    await eventually(lambda: lock_released(nc, "ov.exclusive"), 10, "lock released when the run ended")
    # A lock left by an agent that died (no heartbeat) does not block the job.
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    await state.put("lock.ov.exclusive", codec.pack({"run_id": "old", "agent": "ghost", "since": 0}))
    reply = (await trigger(nc, "ov.exclusive"))["runs"][0]
    assert reply["state"] == "started", reply


async def test_replace_cancels_the_running_one_on_another_agent(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await exclusive_pair(start_agent)
    await apply(nc, exclusive_job("latest", "replace", 30))
    first = (await trigger(nc, "ov.latest"))["runs"][0]
    assert (first["agent"], first["state"]) == ("o1", "started"), first
    second = (await trigger(nc, "ov.latest"))["runs"][0]
    assert second["state"] in ("queued", "started"), second

    async def replaced() -> bool:
        states = {(e["run_id"], e["state"]) for e in await stream_events(nc)}
        return (first["run_id"], "killed") in states and (second["run_id"], "started") in states

    await eventually(replaced, 15, "first run killed, second started")
    events = {(e["run_id"], e["state"]): e for e in await stream_events(nc)}
    assert (
        events[(second["run_id"], "started")]["started_at"] >= events[(first["run_id"], "killed")]["ended_at"]
    )
    await api(nc, subjects.API_RUNS_CANCEL, {"run_id": second["run_id"]})
    await eventually(lambda: lock_released(nc, "ov.latest"), 15, "lock released after the cancel")


async def test_queue_runs_after_the_running_one_on_another_agent(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await exclusive_pair(start_agent)
    await apply(nc, exclusive_job("serial", "queue", 1))
    first = (await trigger(nc, "ov.serial"))["runs"][0]
    second = (await trigger(nc, "ov.serial"))["runs"][0]
    assert (first["agent"], first["state"]) == ("o1", "started"), first
    assert (second["agent"], second["state"]) == ("o2", "queued"), second

    async def both_done() -> bool:
        return len([e for e in await finals(nc, "ov.serial") if e["state"] == "succeeded"]) == 2

    await eventually(both_done, 15, "both runs succeeded")
    ended = {e["run_id"]: e for e in await finals(nc, "ov.serial")}
    started = {e["run_id"]: e for e in await stream_events(nc) if e["state"] == "started"}
    assert started[second["run_id"]]["started_at"] >= ended[first["run_id"]]["ended_at"]
    assert ended[second["run_id"]]["agent"] == "o2"


async def test_slave_overlap_is_per_target(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("f1")
    await start_agent("f2")
    await apply(
        nc,
        toml_jobs(
            job(
                "each",
                mode="slave",
                targets={"agents": ["f1", "f2"]},
                command=["sleep", "1"],
                overlap="forbid",
            ),
            group="ov",
        ),
    )
    assert sorted(r["state"] for r in (await trigger(nc, "ov.each"))["runs"]) == ["started", "started"]
    again = (await trigger(nc, "ov.each"))["runs"]
    assert sorted(r["state"] for r in again) == ["skipped", "skipped"], again


async def test_a_slave_target_that_heartbeats_before_it_listens_still_gets_its_run(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """An agent takes its name (heartbeat) a few ms before it subscribes to its run subject:
    a run sent then met no responder and was recorded 'agent offline'. Nobody got it, so the
    master asks again briefly; the run executes once."""
    agent = await start_agent("late")
    witness = tmp_path / "ran"
    command = ["sh", "-c", f"echo $NATSCHED_RUN_ID >> {witness}"]
    await apply(
        nc, toml_jobs(job("w", mode="slave", targets={"agents": ["late"]}, command=command), group="hb")
    )
    assert agent.responder is not None
    # Heartbeating, not listening: as between take_name and subscribe. stop() drains: it returns
    # once the server has taken its unsubscribes in (a flush), so the master's first ask below
    # meets nobody, as it would before the subscribe.
    await agent.responder.stop()
    unheard = _nobody_listens(master, subjects.agent_run_subject("late"))
    pending = asyncio.create_task(trigger(nc, "hb.w"))
    # Listening again only once the master's first ask met nobody: it asks again after 50, 100
    # and 200 ms, and the subscription has those 350 ms to reach the server.
    async with asyncio.timeout(10):
        await unheard.wait()
    await agent.responder.start()
    reply = await pending
    assert reply["ok"], reply
    await eventually(lambda: _exists(witness), 10, "the run executed")
    await asyncio.sleep(0.5)
    assert len(witness.read_text().splitlines()) == 1


def _nobody_listens(master: MasterService, watched: str) -> asyncio.Event:
    """Set when the master's request on ``watched`` gets the server's no-responders answer."""
    assert master.dispatcher is not None
    requests = master.dispatcher.requests
    ask = requests.request
    unheard = asyncio.Event()

    async def spied(
        subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Msg:
        try:
            return await ask(subject, payload, timeout, headers)
        except NoRespondersError:
            if subject == watched:
                unheard.set()
            raise

    requests.request = spied  # type: ignore[method-assign]
    return unheard


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)
