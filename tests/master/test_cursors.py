"""The master's cursor claims (``KvCursors`` over ``natsched_state``): a burst of due slots."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js import api as js_api
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.jobspec import parse_job
from natsched.master.scheduler import KvCursors
from natsched.models import JobSpec
from natsched.schedule import Due
from natsched.vocab import RunTrigger

T0 = 1_800_000_000.0


def job(name: str) -> JobSpec:
    return parse_job(
        {
            "name": name,
            "group": "g",
            "command": ["true"],
            "targets": {"agents": ["a1"]},
            "triggers": [{"every": "10s"}],
        }
    )


class HeldBack(KeyValue):
    """The real state bucket, except that one key's writes wait until ``go`` is set."""

    def __init__(self, kv: KeyValue, key: str) -> None:
        self.__dict__.update(kv.__dict__)
        self.key = key
        self.go = asyncio.Event()

    async def update(
        self, key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        if key == self.key:
            await self.go.wait()
        return await super().update(key, value, last=last, validate_keys=validate_keys)


async def test_a_slot_is_fired_when_its_own_claim_is_won_not_after_the_whole_burst(nc: Client) -> None:
    """1,000 jobs due at once take a while to claim: the first runs do not wait for the last claims."""
    kv = await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket=subjects.STATE_BUCKET))
    state = HeldBack(kv, subjects.cursor_key("g.slow"))
    fired: list[str] = []
    two_fired = asyncio.Event()

    def fire(due: Due) -> None:
        fired.append(due.spec.key)
        if len(fired) >= 2:
            two_fired.set()

    cursors = KvCursors(state, on_claimed=fire)
    due = [Due(job(name), T0 + 10, RunTrigger.INTERVAL) for name in ("slow", "a", "b")]
    claiming = asyncio.create_task(cursors.claim(due))
    async with asyncio.timeout(5):
        await two_fired.wait()
    assert sorted(fired) == ["g.a", "g.b"]  # fired while g.slow's claim is still out
    assert not claiming.done()
    state.go.set()
    async with asyncio.timeout(5):
        claimed = await claiming
    assert [d.spec.key for d in claimed] == ["g.slow", "g.a", "g.b"]
    assert sorted(fired) == ["g.a", "g.b", "g.slow"]  # each once
    assert await KvCursors(kv).load("g.slow") == T0 + 10


async def _state(nc: Client) -> KeyValue:
    return await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket=subjects.STATE_BUCKET))


def _claim(slot: float, master: str, by: str) -> bytes:
    return codec.pack({"slot": slot, "at": T0, "by": by, "master": master, "trigger": "interval"})


async def test_a_claim_met_at_a_conflict_is_inherited_for_the_audit(nc: Client) -> None:
    """A claim that landed after this scheduler read the cursor (a write buffered in its master's
    client while nats-server restarted) takes the slot: checked by the audit, not forgotten."""
    kv = await _state(nc)
    key = subjects.cursor_key("g.a")
    revision = await kv.put(key, _claim(T0, "m1", "x1"))
    cursors = KvCursors(kv, js=nc.jetstream(), master_id="m2")
    assert await cursors.load("g.a") == T0
    await kv.update(key, _claim(T0 + 10, "m1", "late"), last=revision)  # lands now
    assert await cursors.claim([Due(job("a"), T0 + 10, RunTrigger.INTERVAL)]) == []
    assert [(i.slot, i.master) for i in cursors.inherited["g.a"]] == [(T0, "m1"), (T0 + 10, "m1")]
    assert [i.slot for i in cursors.to_audit(0.0)] == [T0, T0 + 10]
    assert cursors.to_audit(60.0) == [], "each is checked only once its dispatch had time"
    [won] = await cursors.claim([Due(job("a"), T0 + 20, RunTrigger.INTERVAL)])
    carried = codec.unpack((await kv.get(key)).value or b"", "cursor")["unverified"]
    assert [c["slot"] for c in carried] == [T0, T0 + 10], "handed on until audited"


async def test_a_claim_of_this_master_before_it_stepped_down_is_inherited(nc: Client) -> None:
    """The same master leading again (its lease lost to a nats-server restart) runs a new
    scheduler: the previous one's last claim may never have been dispatched."""
    kv = await _state(nc)
    await kv.put(subjects.cursor_key("g.a"), _claim(T0, "m1", "x1"))
    cursors = KvCursors(kv, js=nc.jetstream(), master_id="m1")
    assert await cursors.load("g.a") == T0
    assert [(i.slot, i.master) for i in cursors.inherited["g.a"]] == [(T0, "m1")]
    await cursors.claim([Due(job("a"), T0 + 10, RunTrigger.INTERVAL)])
    cursors.audited(cursors.to_audit(0.0))
    assert await cursors.load("g.a") == T0 + 10
    assert cursors.inherited == {}, "its own writes are not claims to check"
