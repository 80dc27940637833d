"""The master's job index against a real bucket whose watcher misbehaves as seen in the field:
the "initial values done" marker arriving before the values, and live updates arriving late."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from nats.aio.client import Client
from nats.js import api as js_api
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ApiError, NotFoundError
from natsched.jobspec import parse_job
from natsched.master.jobindex import JobIndex
from natsched.models import JobSpec


class MisbehavingWatch:
    """A real bucket whose watcher yields the marker before the initial values and holds every
    later update back for ``lag`` seconds."""

    def __init__(self, kv: KeyValue, lag: float) -> None:
        self._kv = kv
        self._lag = lag

    async def status(self) -> KeyValue.BucketStatus:
        return await self._kv.status()

    async def watchall(self) -> AsyncIterator[Any]:
        watcher = await self._kv.watchall()
        return self._reordered(watcher)

    async def _reordered(self, watcher: Any) -> AsyncIterator[Any]:
        initial = []
        async for entry in watcher:
            if entry is None:
                break
            initial.append(entry)
        yield None
        await asyncio.sleep(0.05)  # a reader that trusted the marker acts now, on nothing
        for entry in initial:
            yield entry
        async for entry in watcher:
            await asyncio.sleep(self._lag)
            yield entry


def encoded(name: str, *command: str) -> bytes:
    spec = parse_job({"name": name, "group": "g", "command": list(command), "targets": {"agents": ["*"]}})
    return codec.encode_job(spec)


async def test_ready_only_with_the_initial_values_and_a_miss_catches_up(nc: Client) -> None:
    kv = await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket=subjects.JOBS_BUCKET))
    for i in range(20):
        await kv.put(f"g.j{i}", encoded(f"j{i}", "true"))
    index = JobIndex(cast(KeyValue, MisbehavingWatch(kv, lag=0.3)))
    watch = asyncio.create_task(index.watch())
    try:
        async with asyncio.timeout(10):
            await index.wait_ready()
            assert len(index.jobs) == 20, "ready before the initial values were in"
            # Created a moment ago (say through another master): not in memory yet, but found.
            await kv.put("g.new", encoded("new", "echo", "1"))
            assert (await index.find("g.new")).command == ("echo", "1")
            # Changed: sync() (what every API request does first) returns only with the change in.
            await kv.put("g.new", encoded("new", "echo", "2"))
            await index.sync()
            assert index.jobs["g.new"].command == ("echo", "2")
    finally:
        watch.cancel()


async def test_loading_decodes_only_chain_jobs_and_the_rest_on_first_use(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master with many stored jobs does not decode them to start: only the jobs with an event
    trigger (the chain index needs them); any other decodes when first read, once; garbage is
    reported when read, and a chain job's replacement leaves the downstream index."""
    kv = await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket=subjects.JOBS_BUCKET))
    for i in range(50):
        await kv.put(f"g.j{i}", encoded(f"j{i}", "true"))
    chained = {"after": ["g.j1"], "on": "succeeded"}
    down = parse_job({"name": "down", "group": "g", "command": ["true"], "targets": {"agents": ["*"]},
                      "triggers": [chained]})  # fmt: skip
    await kv.put("g.down", codec.encode_job(down))
    await kv.put("g.bad", b"\x81\xa1v\x01")
    decoded: list[str] = []
    decode = codec.decode_job

    def counting_decode(data: bytes, key: str) -> JobSpec:
        decoded.append(key)
        return decode(data, key)

    monkeypatch.setattr(codec, "decode_job", counting_decode)
    index = JobIndex(kv)
    watch = asyncio.create_task(index.watch())
    try:
        async with asyncio.timeout(10):
            await index.wait_ready()
            assert decoded == ["g.down"]
            assert [spec.key for spec, _ in index.downstream("g.j1")] == ["g.down"]
            assert index.jobs["g.j7"].command == ("true",) and index.spec("g.j7") is index.jobs["g.j7"]
            assert decoded == ["g.down", "g.j7"]
            assert "g.bad" in index.entries and "g.bad" not in index.jobs
            assert index.entries["g.bad"].error
            await kv.put("g.down", encoded("down", "true"))  # no longer chained
            await index.sync()
            assert index.downstream("g.j1") == []
            # A bare name: unique, then in two groups, then unique again, then gone.
            assert index.resolve("j3") == "g.j3"
            await kv.put("h.j3", codec.encode_job(parse_job({"name": "j3", "group": "h", "command": ["true"],
                                                             "targets": {"agents": ["*"]}})))  # fmt: skip
            await index.sync()
            with pytest.raises(ApiError, match="ambiguous: g.j3, h.j3"):
                index.resolve("j3")
            await kv.delete("g.j3")
            await index.sync()
            assert index.resolve("j3") == "h.j3"
            await kv.delete("h.j3")
            await index.sync()
            with pytest.raises(NotFoundError):
                index.resolve("j3")
    finally:
        watch.cancel()
