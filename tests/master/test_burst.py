"""Bursts of due runs on the master: what is out at once is bounded, and nothing fails for it;
who each run of a burst goes to."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.jobspec import parse_job
from natsched.master.directory import slave_targets
from natsched.master.dispatch import Dispatcher
from natsched.master.scheduler import KvCursors
from natsched.master.window import RequestWindows
from natsched.models import Heartbeat, JobSpec
from natsched.runmessages import RunReply
from natsched.schedule import Due
from natsched.vocab import RunTrigger

T0 = 1_800_000_000.0


def slave(name: str, agent: str) -> JobSpec:
    return parse_job(
        {
            "name": name,
            "group": "b",
            "mode": "slave",
            "command": ["true"],
            "targets": {"agents": [agent]},
            "triggers": [{"every": "10s"}],
        }
    )


class OneAtATime:
    """An agent that takes its run requests one after another, ``each`` seconds apiece, as a
    busy agent works through a burst; it notes how many were out to it at once."""

    def __init__(self, nc: Client, name: str, each: float) -> None:
        self._nc = nc
        self._name = name
        self._each = each
        self.answered = 0

    async def start(self) -> None:
        await self._nc.subscribe(subjects.agent_run_subject(self._name), cb=self._answer)

    async def _answer(self, msg: Msg) -> None:  # a subscription's callbacks run one at a time
        await asyncio.sleep(self._each)
        run_id = codec.unpack(msg.data, "run request")["run_id"]
        self.answered += 1
        await msg.respond(RunReply(ok=True, agent=self._name, run_id=run_id, pid=1, state="started").encode())


async def test_a_burst_longer_than_the_timeout_is_sent_in_a_window_and_none_fails(nc: Client) -> None:
    """100 runs due at once on an agent that takes 10 ms each (1 s in all) and a 0.4 s dispatch
    timeout: sent all at once, the later half would time out and be withdrawn (recorded failed)
    while the agent was working through them; in a window of 8 each waits for 8 at most."""
    await ensure_all(nc.jetstream())
    agent = OneAtATime(nc, "busy", 0.01)
    await agent.start()
    dispatcher = Dispatcher(nc, master_id="m", timeout=0.4, windows=RequestWindows(8))

    async def one(i: int) -> list[RunReply]:
        return await dispatcher.dispatch(slave(f"j{i}", "busy"), trigger=RunTrigger.INTERVAL)

    async with asyncio.timeout(20):
        replies = [r for each in await asyncio.gather(*(one(i) for i in range(100))) for r in each]
    failed = [r.reason for r in replies if not r.ok]
    assert not failed, failed[:3]
    assert agent.answered == 100
    assert dispatcher.windows.waiting(subjects.agent_run_subject("busy")) == 0


async def test_a_leader_that_loses_its_lease_mid_burst_claims_no_more_slots(nc: Client) -> None:
    """The claims of a burst wait for room to dispatch; the lease may go meanwhile. The slots
    not yet claimed then are the next leader's: this master must not claim (and fire) them."""
    kv = await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket=subjects.STATE_BUCKET))
    held = [True]
    room, waiting = asyncio.Event(), asyncio.Event()
    fired: list[Due] = []

    async def fire(due: Due) -> None:
        fired.append(due)
        if len(fired) == 1:
            waiting.set()
            held[0] = False  # the lease goes while the first slot waits for room
            await room.wait()

    cursors = KvCursors(kv, may_claim=lambda: held[0], on_claimed=fire)
    # One job's slots are claimed in order: the second waits for the first one's room.
    one_job = [Due(slave("same", "a1"), T0 + 10 * k, RunTrigger.INTERVAL) for k in range(1, 4)]
    claiming = asyncio.create_task(cursors.claim(one_job))
    async with asyncio.timeout(5):
        await waiting.wait()
    room.set()
    async with asyncio.timeout(5):
        claimed = await claiming
    assert [d.slot for d in claimed] == [T0 + 10]  # the slots after the lease went stay unclaimed
    assert await KvCursors(kv).load("b.same") == T0 + 10


def beat(name: str, *, tags: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> Heartbeat:
    return Heartbeat(
        agent=name,
        version="t",
        protocol=1,
        sent_at=0.0,
        started_at=0.0,
        load1=0.0,
        cpu_percent=0.0,
        memory_percent=0.0,
        running=0,
        max_concurrency=8,
        tags=tags,
        groups=groups,
    )


def test_slave_targets_by_name_tag_and_star_each_once() -> None:
    """Who a slave run goes to (named agents need no heartbeat; tags and '*' only live ones
    whose group filter admits the job), also when a tag's heartbeat changes between runs."""

    def targets(**chosen: list[str]) -> list[str]:
        spec = parse_job({"name": "j", "group": "g", "mode": "slave", "command": ["true"], "targets": chosen})
        return slave_targets(spec, live)

    live = [beat("a1", tags=("db",)), beat("a2"), beat("a3", tags=("db",), groups=("other",))]
    assert targets(agents=["a2", "gone", "a2"]) == ["a2", "gone"]
    assert targets(tags=["db"]) == ["a1"]  # a3 takes only the group "other"
    assert targets(agents=["a1"], tags=["db"]) == ["a1"]
    assert targets(agents=["*"]) == ["a1", "a2"]
    live = [beat("a1"), beat("a2", tags=("db",))]  # a1 lost the tag, a2 has it now
    assert targets(tags=["db"]) == ["a2"]
