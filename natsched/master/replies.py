"""Run requests and their replies: nats-py's request/reply, without its per-request overhead.

``Client.request`` makes a NUID (pure Python) and two random bytes per request, checks the
subject twice and wraps the wait in ``asyncio.wait_for``: in a profile of the master
dispatching a burst (py-spy, 1,000 slave jobs due at one second) that was a tenth of its
CPU. Here one wildcard subscription on this connection's own inbox takes every reply, a
request's token is a counter, and its timeout is a timer on the loop. What a caller sees is
the same: the reply, ``NoRespondersError`` when nobody listens on the subject (the server's
503 status), ``TimeoutError`` (nats') when nobody answered in time.

``KvUpdates`` is ``KeyValue.update`` (a compare-and-set write) over the same requests, with
the same answers: the new revision, ``KeyWrongLastSequenceError`` when the key moved on, the
JetStream error otherwise. The leader's cursor claims use it: a burst of 1,000 due jobs is
1,000 of them at the slot.
"""

from __future__ import annotations

import asyncio
import itertools
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import Header
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError

from natsched import subjects

NO_RESPONDERS = "503"


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(NatsTimeoutError())


class Requester:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""  # <this connection's inbox prefix>.<unique>. (its permissions allow it)
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}  # only requests in flight
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()

    async def request(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Msg:
        if self._sub is None:
            await self._subscribe()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            del self._waiting[token]
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS:
            raise NoRespondersError
        return msg

    async def _subscribe(self) -> None:
        async with self._subscribing:  # the first requests of a burst come together
            if self._sub is None:
                prefix = f"{self._nc.new_inbox()}."
                self._sub = await self._nc.subscribe(f"{prefix}*", cb=self._on_reply)
                self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():  # a late reply finds nobody waiting
            future.set_result(msg)


# JetStream's error codes for "the subject's last sequence is not the one expected".
WRONG_LAST_SEQUENCE = (10071, 10164)
KV_TIMEOUT = 5.0  # as nats-py's JetStream context


class KvUpdates:
    def __init__(self, requests: Requester, bucket: str, timeout: float = KV_TIMEOUT) -> None:
        self._requests = requests
        self._prefix = subjects.kv_subject_prefix(bucket)
        self._timeout = timeout

    async def update(self, key: str, value: bytes, last: int | None) -> int:
        """Write ``value`` under ``key`` if its revision is still ``last``: the new revision."""
        expected = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last or 0)}
        try:
            msg = await self._requests.request(self._prefix + key, value, self._timeout, expected)
        except NoRespondersError:
            raise NoStreamResponseError from None
        answer = json.loads(msg.data)
        error = answer.get("error")
        if error is None:
            return int(answer["seq"])
        if error.get("err_code") in WRONG_LAST_SEQUENCE:
            raise KeyWrongLastSequenceError(description=error.get("description"))
        raise APIError.from_error(error)  # raises the error's own class
