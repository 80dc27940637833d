"""Connecting to NATS the way every natsched component should.

Commands get a bounded first connect (a clear error, not a hang); services reconnect
forever once connected, and may also connect in the background and work from their
local state meanwhile (nats-py's max_reconnect_attempts=-1 makes the *first* connect
retry forever too, which is what a service started before its server wants).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

from natsched import subjects
from natsched.errors import NotConnectedError
from natsched.settings import ConnectionSettings

log = logging.getLogger(__name__)

# A dead server is noticed after ping_interval * max_outstanding_pings.
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 2
RECONNECT_WAIT = 0.5
# A command's first connect gives up after this many connect timeouts.
FIRST_CONNECT_BOUND = 3


def _tls_context(settings: ConnectionSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca or settings.tls_cert or settings.url.startswith("tls://")):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def connect_options(settings: ConnectionSettings) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from settings (auth, TLS, timeouts)."""
    options: dict[str, Any] = {
        "servers": [s.strip() for s in settings.url.split(",") if s.strip()],
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "reconnect_time_wait": RECONNECT_WAIT,
        # Replies come to this role's own inbox, which no other role may subscribe to.
        "inbox_prefix": settings.inbox_prefix or subjects.ADMIN_INBOX,
    }
    if settings.creds:
        options["user_credentials"] = settings.creds
    if settings.nkey_seed:
        options["nkeys_seed"] = settings.nkey_seed
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password or ""
    if settings.token:
        options["token"] = settings.token
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return options


async def _log_error(exc: Exception) -> None:
    log.warning("nats: %s", exc or type(exc).__name__)


async def connect(
    settings: ConnectionSettings,
    *,
    forever: bool = False,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
) -> Client:
    """Connect to NATS.

    ``forever=False`` (commands): try each server once, raise NotConnectedError with the
    reason. ``forever=True`` (services): retry the first connect and every later
    reconnect without limit; run it in a task you own if you must not block.
    """
    options = connect_options(settings)

    async def error_cb(exc: Exception) -> None:
        await _log_error(exc)
        if on_error is not None:
            await on_error(exc)

    options["error_cb"] = error_cb
    if on_reconnect is not None:
        options["reconnected_cb"] = on_reconnect
    if on_disconnect is not None:
        options["disconnected_cb"] = on_disconnect
    if forever:
        options["max_reconnect_attempts"] = -1
        options["allow_reconnect"] = True
    else:
        # nats-py treats 0 as "no limit"; 1 means each server is tried twice, then given up.
        options["max_reconnect_attempts"] = 1
        options["allow_reconnect"] = False
    try:
        if forever:
            return await nats.connect(**options)
        async with asyncio.timeout(FIRST_CONNECT_BOUND * settings.connect_timeout + 1):
            return await nats.connect(**options)
    except (NoServersError, OSError, TimeoutError) as exc:
        raise NotConnectedError(
            f"cannot reach NATS at {settings.describe()}: {exc or type(exc).__name__}"
        ) from None
    except nats.errors.Error as exc:
        raise NotConnectedError(f"NATS at {settings.describe()} refused the connection: {exc}") from None
