"""The master's run requests (``natsched/master/replies.py``) on a real server: what nats-py's
``request`` says, for less work per request."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as js_api
from nats.js.errors import KeyWrongLastSequenceError

from natsched.master.replies import KvUpdates, Requester


async def test_replies_no_responders_and_timeouts_as_nats_py_says_them(nc: Client) -> None:
    answer_late = asyncio.Event()

    async def echo(msg: Msg) -> None:
        if msg.data == b"late":
            await answer_late.wait()
        await msg.respond(msg.data.upper())

    await nc.subscribe("svc.echo", cb=echo)
    requests = Requester(nc)
    async with asyncio.timeout(10):
        asked = [requests.request("svc.echo", f"r{i}".encode(), 2) for i in range(50)]
        replies = await asyncio.gather(*asked)
        assert [m.data for m in replies] == [f"R{i}".encode() for i in range(50)]  # each its own
        with pytest.raises(NoRespondersError):
            await requests.request("svc.nobody", b"x", 2)
        with pytest.raises(NatsTimeoutError):
            await requests.request("svc.echo", b"late", 0.2)
        answer_late.set()  # the late answer finds nobody waiting; the next request is unharmed
        assert (await requests.request("svc.echo", b"next", 2)).data == b"NEXT"


async def test_kv_updates_answer_as_key_value_update(nc: Client) -> None:
    """A compare-and-set write: the new revision, or the key moved on (also for a first write
    of a key that exists), the same as nats-py's ``KeyValue.update`` on the same bucket."""
    kv = await nc.jetstream().create_key_value(js_api.KeyValueConfig(bucket="cas_test"))
    updates = KvUpdates(Requester(nc), "cas_test")
    async with asyncio.timeout(10):
        first = await updates.update("cursor.g.j", b"1", None)  # None: the key must not exist
        assert (await kv.get("cursor.g.j")).revision == first
        second = await updates.update("cursor.g.j", b"2", first)
        assert second > first and (await kv.get("cursor.g.j")).value == b"2"
        for stale in (first, None):
            with pytest.raises(KeyWrongLastSequenceError):
                await updates.update("cursor.g.j", b"3", stale)
            with pytest.raises(KeyWrongLastSequenceError):
                await kv.update("cursor.g.j", b"3", last=stale)
        assert (await kv.get("cursor.g.j")).value == b"2"  # nothing written by the refused ones
