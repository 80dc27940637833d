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
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoServersError

from natsched import subjects
from natsched.errors import NotConnectedError
from natsched.quietlog import Throttled
from natsched.settings import ConnectionSettings

log = logging.getLogger(__name__)
quiet = Throttled(log)

# A dead server is noticed after ping_interval * max_outstanding_pings.
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 2
RECONNECT_WAIT = 0.5
CLOSED_CHECK_INTERVAL = 0.5
RECONNECT_MAX = 1.0  # bounded: a server back after a restart is found within ~1 s (agents must
# heartbeat again well within a master's --unresponsive-after, which counts from its own reconnect)
# A command's first connect gives up after this many connect timeouts.
FIRST_CONNECT_BOUND = 3
# A service gives up after the server refused its credential this many times in a row (~4 s):
# a wrong or revoked credential does not heal by retrying, and a service retrying it forever
# looked alive to systemd while it could do nothing. The few attempts ride out a server
# reloading its accounts.
REFUSALS_BEFORE_EXIT = 5
# A subscription others may flood (the trigger subject, the API, lock requests): at most this
# much waits in nats-py's queue; beyond it, messages are dropped (a slow-consumer error, logged
# once per 10 s) rather than held. With nats-py's defaults (512k messages, 128 MiB) a master
# flooded with small triggers grew by 180 MB and kept it, fell behind reading its socket, and
# nats-server cut the whole connection as a slow consumer: the leader lost its lease.
# A requester whose message was dropped gets no answer and asks again (natsched run: 3 times).
INBOUND_PENDING_MSGS = 4096
INBOUND_PENDING_BYTES = 16 * 1024 * 1024
# How nats-server words a credential it does not accept (nats-py passes the text on).
_REFUSED = ("authorization violation", "authentication expired", "authentication revoked")


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


# Errors that mean "the server is unreachable or the link dropped": while they repeat, the
# reconnect loop is logged once per outage, not at every attempt.
_LINK_ERRORS = (
    OSError,
    TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.errors.StaleConnectionError,
    NoServersError,
)


# Each service connection's Reconnecting, so closed_for_good can say why it closed it.
_STATES: weakref.WeakKeyDictionary[Client, Reconnecting] = weakref.WeakKeyDictionary()


class Reconnecting:
    """A service connection's state changes, logged once each, and reconnects that back off.

    nats-py waits ``reconnect_time_wait`` between attempts on one server and reports every
    failed attempt to ``error_cb``: at a fixed 0.5 s an outage wrote two lines a second. Each
    failed attempt here stretches the wait by half, up to ``RECONNECT_MAX``; the first
    success puts it back to ``RECONNECT_WAIT``.
    """

    def __init__(self, nc: Client, where: str, *, outages: int = logging.WARNING) -> None:
        self._nc = nc
        self._where = where
        self._outages = outages  # the level of an outage's line and of its end's
        self.failures = 0
        self.refusals = 0  # the credential refused, since the last successful connect
        self.ever_connected = False
        self.gave_up = ""  # why, once the refusals made it close the connection
        self._closing: asyncio.Task[None] | None = None

    async def error(self, exc: Exception) -> None:
        if any(text in str(exc).lower() for text in _REFUSED):
            await self._refused(exc)
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            # Once per dropped message, from nats-py's read loop: a line each was a flood itself.
            quiet.log(
                logging.WARNING,
                f"slow consumer {exc.sid}",
                "nats: subscription on %s is full: messages dropped (more arrive than it handles)",
                subjects.shown(exc.subject),
            )
            return
        if not isinstance(exc, _LINK_ERRORS):
            await _log_error(exc)  # permissions...: each one says something new
            return
        self.failures += 1
        wait = float(self._nc.options.get("reconnect_time_wait", RECONNECT_WAIT))
        self._nc.options["reconnect_time_wait"] = min(RECONNECT_MAX, max(RECONNECT_WAIT, wait * 1.5))
        if self.failures == 1:
            log.log(
                self._outages,
                "nats: %s; retrying %s (every %g-%gs, quiet until it changes)",
                exc or type(exc).__name__,
                self._where,
                RECONNECT_WAIT,
                RECONNECT_MAX,
            )
        else:
            log.debug("nats: attempt %d failed: %s", self.failures, exc or type(exc).__name__)

    async def _refused(self, exc: Exception) -> None:
        self.refusals += 1
        if self.refusals == 1:
            log.warning("nats: %s refused the credential (%s); trying again", self._where, exc)
        if self.refusals < REFUSALS_BEFORE_EXIT:
            return
        why = f"NATS at {self._where} refused the credential {self.refusals} times ({exc})"
        self.gave_up = why
        if not self.ever_connected:
            # Raised inside nats-py's first-connect loop, this ends connect() itself.
            raise NotConnectedError(why)
        if self._closing is None:
            # In nats-py's reconnect task: closing ends it; the service's closed-connection
            # watch then stops the service with one line and a non-zero exit.
            log.error("%s; closing the connection", why)
            # Quietly: the socket may be gone already (nats-py's close then raised in a task
            # nobody awaits, and asyncio printed its traceback).
            self._closing = asyncio.create_task(close_quietly(self._nc, 1.0, drain=False))

    def connected(self) -> None:
        self.ever_connected = True
        self.refusals = 0
        if self.failures:
            level = logging.INFO if self._outages >= logging.WARNING else self._outages
            log.log(level, "nats: connected to %s after %d failed attempt(s)", self._where, self.failures)
        self.failures = 0
        self._nc.options["reconnect_time_wait"] = RECONNECT_WAIT


def _callbacks(
    nc: Client,
    state: Reconnecting | None,
    on_reconnect: Callable[[], Awaitable[None]] | None,
    on_disconnect: Callable[[], Awaitable[None]] | None,
    on_error: Callable[[Exception], Awaitable[None]] | None,
    on_closed: Callable[[str], Awaitable[None]] | None,
) -> dict[str, Any]:
    async def error_cb(exc: Exception) -> None:
        if state is not None:
            await state.error(exc)
        else:  # a command: its failure becomes one line of error; each attempt is noise before it
            log.debug("nats: %s", exc or type(exc).__name__)
        if on_error is not None:
            await on_error(exc)

    async def reconnected_cb() -> None:
        if state is not None:
            state.connected()
        if on_reconnect is not None:
            await on_reconnect()

    async def closed_cb() -> None:
        if state is not None and state.gave_up and not state.ever_connected:
            return  # connect() raises the reason itself
        if on_closed is not None:
            await on_closed((state.gave_up if state else "") or str(nc.last_error or "closed"))

    callbacks: dict[str, Any] = {
        "error_cb": error_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
    }
    if on_disconnect is not None:
        callbacks["disconnected_cb"] = on_disconnect
    return callbacks


async def connect(
    settings: ConnectionSettings,
    *,
    forever: bool = False,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
    on_closed: Callable[[str], Awaitable[None]] | None = None,
    second: bool = False,
) -> Client:
    """Connect to NATS.

    ``forever=False`` (commands): try each server once, raise NotConnectedError with the
    reason. ``forever=True`` (services): retry the first connect and every later
    reconnect without limit, backing off (:class:`Reconnecting`); run it in a task you own
    if you must not block. ``on_closed(reason)``: the client closed the connection for good
    (the server refused a protocol line, or ``close()`` was called) and will not reconnect.
    ``second``: the service's other connection to the same servers (outages logged at debug).
    """
    options = connect_options(settings)
    nc = Client()
    # A service's second connection to the same servers: its outages are the first one's,
    # logged there (at debug here, so an outage is not told twice).
    outages = logging.DEBUG if second else logging.WARNING
    state = Reconnecting(nc, settings.describe(), outages=outages) if forever else None
    if state is not None:
        _STATES[nc] = state
    options.update(_callbacks(nc, state, on_reconnect, on_disconnect, on_error, on_closed))
    if forever:
        options["max_reconnect_attempts"] = -1
        options["allow_reconnect"] = True
    else:
        # nats-py treats 0 as "no limit"; 1 means each server is tried twice, then given up.
        options["max_reconnect_attempts"] = 1
        options["allow_reconnect"] = False
    try:
        if forever:
            await nc.connect(**options)
            assert state is not None
            state.connected()
            return nc
        async with asyncio.timeout(FIRST_CONNECT_BOUND * settings.connect_timeout + 1):
            await nc.connect(**options)
            return nc
    except NotConnectedError:  # the credential refused (Reconnecting._refused)
        await close_quietly(nc, 1.0)
        raise
    except (NoServersError, OSError, TimeoutError) as exc:
        raise NotConnectedError(
            f"cannot reach NATS at {settings.describe()}: {exc or type(exc).__name__}"
        ) from None
    except nats.errors.Error as exc:
        raise NotConnectedError(f"NATS at {settings.describe()} refused the connection: {exc}") from None


async def subscribe_inbound(
    nc: Client, subject: str, *, cb: Callable[[Msg], Awaitable[None]], queue: str = ""
) -> Subscription:
    """A subscription that others may flood, with a bounded pending queue (INBOUND_PENDING_*).

    Give it a connection of its own (a master's ``requests_nc``): nats-server cuts a
    connection it cannot write to fast enough as a slow consumer, and a flood on a shared one
    took the lease renewals, dispatches and watches down with it.
    """
    return await nc.subscribe(
        subject,
        queue=queue,
        cb=cb,
        pending_msgs_limit=INBOUND_PENDING_MSGS,
        pending_bytes_limit=INBOUND_PENDING_BYTES,
    )


def dropped_for_its_reply(msg: Msg, *, reply_required: bool = False) -> bool:
    """True (and one warning per period) if ``msg`` is to be dropped, unhandled and unanswered:
    its reply subject is no requester's inbox (``subjects.is_reply_inbox``), or it has none
    where an answer is what it is for (``reply_required``: an agent's run, cancel and sync
    requests).

    Why: a master answers with its own permissions, so a reply subject chosen by the sender
    must be an inbox; and nats-server pushes a consumer's messages to whatever deliver subject
    its creator chose (any role that may read a stream; permissions cannot stop it), with a
    JetStream ack subject as their reply and whatever the stream held as their content.
    """
    if (msg.reply and subjects.is_reply_inbox(msg.reply)) or not (msg.reply or reply_required):
        return False
    quiet.log(
        logging.WARNING,
        "foreign reply",
        "message on %s dropped: its reply subject %s is no reply inbox (_INBOX.… or _INBOX_<role>.…)",
        subjects.shown(msg.subject),
        subjects.shown(msg.reply),
    )
    return True


async def unsubscribe_draining(nc: Client, subs: Sequence[Subscription], timeout: float) -> None:
    """Unsubscribe ``subs``, first taking in what the server sent them before it read the
    unsubscribe: their callbacks run. Within ``timeout``; never raises.

    ``unsubscribe()`` forgets a subscription at once and only queues its UNSUB: a message the
    server sent before reading it then arrives for an unknown subscription, and nats-py drops
    it (a run request so went unanswered, its master waiting out its dispatch timeout).
    nats-py's ``drain()`` sends the UNSUB, flushes (the PONG comes after every message the
    server sent before the UNSUB) and waits for the callbacks of what came, then forgets.
    Only when connected: cut off, nothing more comes, and the flush would wait out ``timeout``.
    """
    if nc.is_closed:
        return  # closing, nats-py stopped every subscription and forgot it
    if nc.is_connected:
        try:
            async with asyncio.timeout(timeout):
                drains = [sub.drain() for sub in subs]  # type: ignore[no-untyped-call]  # unannotated
                results = await asyncio.gather(*drains, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                return
            log.debug("draining subscriptions failed: %r", failures[0])
        except TimeoutError:
            log.debug("subscriptions not drained within %gs", timeout)
    for sub in subs:
        _forget(nc, sub)


def _forget(nc: Client, sub: Subscription) -> None:
    """What ``unsubscribe()`` does while reconnecting (no UNSUB: the server forgot the
    connection's subscriptions, and a forgotten one is not replayed to it). Also for one a
    drain left half done: nats-py marked it closed, so ``unsubscribe()`` refuses it, yet it is
    still registered, and a reconnect would subscribe it again. Idempotent."""
    sub._stop_processing()
    nc._remove_sub(sub._id)


async def closed_for_good(nc: Client, interval: float = CLOSED_CHECK_INTERVAL) -> str:
    """Return (with the reason) once the client closed the connection and stopped reconnecting.

    ``closed_cb`` alone is not enough: nats-py skips it when the server closes the connection
    while the client is reconnecting (e.g. replaying a subscription the server refuses).
    """
    while not nc.is_closed:  # noqa: ASYNC110 - nats-py offers no event to wait on
        await asyncio.sleep(interval)
    state = _STATES.get(nc)
    return (state.gave_up if state else "") or str(nc.last_error or "closed")


async def close_quietly(nc: Client | None, timeout: float, *, drain: bool = True) -> None:
    """Leave NATS at shutdown without hanging or raising: drain (flush what we published) when
    connected, else close at once; a connection cut off has nothing to flush.

    ``drain=False`` for a connection that only receives requests others may flood: a drain
    waits for its pending messages, which a flood keeps refilling until the timeout cancels
    it (asyncio then printed a traceback at exit); its requesters ask another master.
    """
    if nc is None or nc.is_closed:
        return
    if nc.is_connected and drain:
        try:
            await asyncio.wait_for(nc.drain(), timeout)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the server went away meanwhile
            log.debug("drain failed (%r); closing", exc)
    try:
        await asyncio.wait_for(nc.close(), 1.0)
    except Exception as exc:  # noqa: BLE001 - the socket is already gone: closed enough
        log.debug("close failed: %r", exc)
