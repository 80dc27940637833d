"""Talking to the master's admin API from commands (and from tests)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from natsched import codec, subjects
from natsched.connection import connect
from natsched.errors import ApiError, CodecError, NoMasterError, NotOpenError
from natsched.settings import ConnectionSettings, redact_url

API_TIMEOUT = 15.0
TRIGGER_TIMEOUT = 30.0
TRIGGER_ATTEMPTS = 3  # requests with a trigger id, 10 s each: a lost reply is asked for again


async def request_trigger(
    nc: Client, job: str, body: dict[str, Any], *, timeout: float = TRIGGER_TIMEOUT
) -> dict[str, Any]:
    """Start ``job`` through ``natsched.trigger.<job>``: the master's reply, ok or not.

    With a ``trigger_id`` in ``body`` a request that got no answer (a master frozen or
    restarting, NATS restarting and the reply lost) is sent again, ``TRIGGER_ATTEMPTS`` times
    within ``timeout``: the master starts one run for all of them. Without one it is not (a
    second request would be a second start).
    """
    attempts = TRIGGER_ATTEMPTS if "trigger_id" in body else 1
    for attempt in range(1, attempts + 1):
        try:
            msg = await nc.request(
                subjects.trigger_subject(job), codec.to_json(body), timeout=timeout / attempts
            )
            break
        except NoRespondersError:
            raise NoMasterError(
                "no master serves natsched.trigger.*; start one with 'natsched master'"
            ) from None
        except NatsTimeoutError:
            if attempt == attempts:
                raise NoMasterError(
                    f"no answer to the trigger within {timeout:g}s; the job may start all the same"
                    f" (see 'natsched runs --job {job}')"
                ) from None
    reply: dict[str, Any] = codec.from_json(msg.data, "trigger reply")
    return reply


class AdminClient:
    """``async with AdminClient(settings) as api: await api.call(subjects.API_APPLY, {...})``."""

    def __init__(self, settings: ConnectionSettings, *, timeout: float = API_TIMEOUT) -> None:
        self.settings = settings.with_name("natsched-cli")
        self.timeout = timeout
        self._nc: Client | None = None

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise NotOpenError("AdminClient is not connected")
        return self._nc

    async def __aenter__(self) -> Self:
        self._nc = await connect(self.settings)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def call(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; NoMasterError if nobody serves it, ApiError with the master's message if it fails."""
        payload = codec.to_json(body or {})
        if len(payload) > self.nc.max_payload:  # nats-py would raise MaxPayloadError mid-request
            raise ApiError(
                f"request to {subject} is {len(payload):,} bytes; the NATS server accepts at most "
                f"{self.nc.max_payload:,} (max_payload): send less at once (e.g. split the job file)"
            )
        try:
            msg = await self.nc.request(subject, payload, timeout=self.timeout)
        except NoRespondersError:
            raise NoMasterError(
                f"no master answers on {subject} at {redact_url(self.settings.url)}; "
                "start one with 'natsched master'"
            ) from None
        except NatsTimeoutError:
            raise NoMasterError(f"no master answered {subject} within {self.timeout:g}s") from None
        try:
            reply = codec.from_json(msg.data, f"reply to {subject}")
        except CodecError as exc:
            raise ApiError(str(exc)) from None
        if not reply.get("ok"):
            raise ApiError(
                str(reply.get("error", "the master answered without a reason")),
                [str(e) for e in reply.get("errors", [])],
            )
        return reply
