"""The one scheduling core (natsched.schedule), run against every cursor store.

The master keeps cursors in ``natsched_state`` with compare-and-set, the agent in SQLite;
both must give the same exactly-once behaviour, so every case below runs over both (as
APScheduler 4 runs one suite over every data store). The clock is a number: no sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosqlite
import nats
import pytest
from nats.js import api as js_api

from agent.mirror import SqliteCursors
from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.jobspec import parse_job
from natsched.master.scheduler import KvCursors
from natsched.models import JobSpec
from natsched.schedule import CursorStore, Due, Schedule, Scheduler

T0 = 1_800_000_000.0  # a whole minute
StoreFactory = Callable[..., Awaitable[CursorStore]]


def spec(every: str = "10s", misfire: str = "skip", **extra: object) -> JobSpec:
    return parse_job(
        {
            "name": "j",
            "group": "g",
            "command": ["true"],
            "misfire": misfire,
            "misfire_cap": 3,
            "targets": {"agents": ["*"]},
            "triggers": [{"every": every}],
            **extra,
        }
    )


@pytest.fixture(params=["kv", "kv-first-read", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """``await stores()``: another scheduler's view of one backend; ``await stores(restart=True)``:
    a restarted process's. The agent's SQLite file has one writer (its one scheduler), so there
    only a restart opens the file anew."""
    if request.param.startswith("kv"):
        server: EmbeddedServer = request.getfixturevalue("nats_server")
        nc = await nats.connect(server.url)
        state = await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket=subjects.STATE_BUCKET))
        # "kv-first-read": a new leader reads every cursor in one go (the master's way).
        js = nc.jetstream() if request.param == "kv-first-read" else None

        async def kv_store(restart: bool = False) -> CursorStore:
            return KvCursors(state, js=js)

        yield kv_store
        await nc.close()
        return
    connections: list[aiosqlite.Connection] = []
    current: list[CursorStore] = []

    async def sqlite_store(restart: bool = False) -> CursorStore:
        if restart or not current:
            connections.append(await aiosqlite.connect(tmp_path / "cursors.db"))
            current.append(SqliteCursors(connections[-1]))
        return current[-1]

    yield sqlite_store
    for db in connections:
        await db.close()


class Harness:
    """A scheduler with a dict of definitions, a settable clock and a list of what it fired."""

    def __init__(self, store: CursorStore, jobs: dict[str, JobSpec], now: float) -> None:
        self.jobs = jobs
        self.now = now
        self.fired: list[float] = []
        self.recorded_before_fire: list[bool] = []
        self.store = store
        self.core = Scheduler(
            Schedule(lambda s: s.enabled), store, self._lookup, self._fire, clock=lambda: self.now
        )

    async def _lookup(self, key: str) -> JobSpec | None:
        return self.jobs.get(key)

    async def _fire(self, due: list[Due]) -> None:
        for each in due:
            self.recorded_before_fire.append((await self.store.load(each.spec.key) or 0.0) >= each.slot)
            self.fired.append(each.slot)

    async def step(self, now: float) -> list[float]:
        self.now = now
        return [d.slot for d in await self.core.step(now)]

    async def start(self, now: float) -> list[float]:
        """Start-up: every job added (as the agent does from its cache)."""
        self.now = now
        for key, job in self.jobs.items():
            await self.core.add(key, job, fire_on_time=True)
        return list(self.fired)


async def test_each_slot_fires_once_on_the_grid_recorded_before_it_fires(stores: StoreFactory) -> None:
    h = Harness(await stores(), {"g.j": spec()}, T0 + 1)
    h.core.changed(["g.j"])
    assert await h.step(T0 + 1) == []  # a new job: no backlog
    assert h.core.schedule.next_due() == T0 + 10
    assert await h.step(T0 + 9.99) == []
    assert await h.step(T0 + 10.002) == [T0 + 10]
    assert await h.step(T0 + 10.5) == []  # not twice
    # Late by 25 s (a stalled loop): each slot once, in order, and no drift afterwards.
    assert await h.step(T0 + 45) == [T0 + 20, T0 + 30, T0 + 40]
    assert h.core.schedule.next_due() == T0 + 50
    assert h.recorded_before_fire == [True] * 4
    assert await (await stores(restart=True)).load("g.j") == T0 + 40


@pytest.mark.parametrize(
    ("policy", "caught_up"),
    [("skip", []), ("run-once", [T0 + 70]), ("run-all", [T0 + 50, T0 + 60, T0 + 70])],
)
async def test_a_restart_follows_the_misfire_policy(
    stores: StoreFactory, policy: str, caught_up: list[float]
) -> None:
    jobs = {"g.j": spec(misfire=policy)}
    before = Harness(await stores(), jobs, T0)
    await before.start(T0)
    assert await before.step(T0 + 10) == [T0 + 10]
    # Down from T0+10 to T0+75: slots 20..70 missed (70 is 5 s old: late, not on time).
    after = Harness(await stores(restart=True), jobs, T0 + 75)
    assert await after.start(T0 + 75) == caught_up
    assert await after.step(T0 + 80) == [T0 + 80]  # then on the grid again


async def test_a_slot_recorded_by_another_scheduler_is_not_fired_again(stores: StoreFactory) -> None:
    jobs = {"g.j": spec()}
    first, second = Harness(await stores(), jobs, T0 + 2), Harness(await stores(), jobs, T0 + 2)
    await first.start(T0 + 2)
    await second.start(T0 + 2)
    assert await first.step(T0 + 10) == [T0 + 10]
    assert await second.step(T0 + 10.01) == []
    assert await second.step(T0 + 20) == [T0 + 20]
    assert await first.step(T0 + 20.01) == []
    assert first.fired + second.fired == [T0 + 10, T0 + 20]


async def test_a_never_fired_job_fires_its_on_time_slot_at_start_up_only(stores: StoreFactory) -> None:
    assert await Harness(await stores(), {"g.a": spec(name="a")}, T0 + 0.5).start(T0 + 0.5) == [T0]
    late = Harness(await stores(), {"g.b": spec(name="b")}, T0 + 5)
    assert await late.start(T0 + 5) == []  # 5 s late: skipped


async def test_changed_and_removed_definitions_replace_the_schedule(stores: StoreFactory) -> None:
    h = Harness(await stores(), {"g.j": spec(every="10s")}, T0)
    await h.start(T0)
    h.jobs["g.j"] = spec(every="7s")
    h.core.changed(["g.j"])
    assert await h.step(T0 + 1) == []
    # Every 7 s on the epoch grid (7 * 257142857 = T0 - 1): T0+6, T0+13, T0+20.
    assert await h.step(T0 + 21.5) == [T0 + 6, T0 + 13, T0 + 20]
    h.jobs["g.j"] = spec(every="7s", enabled=False)
    h.core.changed(["g.j"])
    assert await h.step(T0 + 60) == []
    assert h.core.schedule.next_due() is None


async def test_settle_ends_a_step_still_taking_up_many_changes(tmp_path: Path) -> None:
    """An agent stopped while its scheduler takes up 100k jobs just synced: the step stops
    reading definitions when told to settle, instead of going on into a closed store."""
    db = await aiosqlite.connect(tmp_path / "cursors.db")
    jobs = {f"g.j{i}": spec(name=f"j{i}") for i in range(2000)}
    h = Harness(SqliteCursors(db), jobs, T0 + 1)
    looked_up: list[str] = []
    under_way = asyncio.Event()

    async def slow_lookup(key: str) -> JobSpec | None:
        looked_up.append(key)
        if len(looked_up) == 10:
            under_way.set()
        await asyncio.sleep(0.002)  # 2000 of them: ~4 s or more
        return jobs.get(key)

    h.core._lookup = slow_lookup
    h.core.changed(jobs)
    running = asyncio.create_task(h.core.run())
    async with asyncio.timeout(5):
        await under_way.wait()
    running.cancel()  # as the agent's stop does, then it settles before closing the store
    async with asyncio.timeout(2):
        await h.core.settle(2.0)
    read = len(looked_up)
    await asyncio.sleep(0.1)
    await db.close()
    assert len(looked_up) == read < len(jobs)  # the step ended: nothing read after settle
