"""Following run events with a durable consumer that every master shares.

The consumer is a queue group: each event goes to one master, and one that is not
acknowledged (the master died, or handling failed) comes back after ``ack_wait`` to
whichever master is there. Created with ``DeliverPolicy.NEW`` the first time; from then on
the server remembers the position, so events published while no master runs are delivered
when one starts.

``ack_wait`` is short (``ACK_WAIT``): it is how long an event delivered to a master that
then died waits before another master gets it (the server redelivers only after it,
however many other members are alive). Work that takes longer (a dispatch waiting for a
slow agent, a webhook) stays ours by ``in_progress`` acks every ``ack_wait / 3``; each
message is handled in its own task, so none waits unacknowledged behind another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from natsched import subjects
from natsched.quietlog import Throttled
from natsched.vocab import RunState

log = logging.getLogger(__name__)
quiet = Throttled(log)  # another role's consumer may push any number of them
ACK_WAIT = 2.0  # below the default lease (5 s): a completion is never held longer than a leader
MAX_ACK_PENDING = 1000  # bounds the handler tasks of all masters together


class EventFollower:
    """One master's member of a shared durable consumer; ``run`` keeps its messages acked."""

    def __init__(
        self,
        js: JetStreamContext,
        durable: str,
        states: Iterable[RunState],
        handler: Callable[[Msg], Awaitable[None]],
        *,
        ack_wait: float = ACK_WAIT,
        stream: str = subjects.EVENTS_STREAM,
        everything: bool = False,
    ) -> None:
        """``everything``: no filter, every message of ``stream`` from its first (a stream
        natsched made for this consumer, whose subjects change: subject triggers)."""
        self._js = js
        self.durable = durable
        self._stream = stream
        self._everything = everything
        # Sorted: the same states give the same consumer config from every master.
        self._filters = [subjects.event_state_filter(state) for state in sorted(states)]
        self._handler = handler
        self.ack_wait = ack_wait
        self._inflight: dict[asyncio.Task[None], Msg] = {}

    async def start(self) -> None:
        """Create the consumer, or bring an existing one to our ack_wait and filters; subscribe."""
        deliver = subjects.master_deliver_subject(self.durable)
        config = api.ConsumerConfig(
            durable_name=self.durable,
            deliver_subject=deliver,
            deliver_group=self.durable,
            deliver_policy=api.DeliverPolicy.ALL if self._everything else api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=MAX_ACK_PENDING,
            filter_subjects=None if self._everything else self._filters,
        )
        try:
            info = await self._js.consumer_info(self._stream, self.durable)
        except NotFoundError:
            info = None
        if info is not None and not self._a_masters(info.config):
            # Made by another role under our name, through the create subject without a name
            # (ordered consumers need it, so no permission denies it; the name is in the body):
            # ephemeral, no acks, no queue group. Taken as it is, the masters could not start
            # (no deliver group) or lost events when it vanished. Its position is worth nothing.
            log.warning(
                "consumer %s on %s was not made by a master (%s): deleted, made again",
                self.durable,
                self._stream,
                subjects.shown(info.config.deliver_subject),
            )
            with contextlib.suppress(NotFoundError):  # another master starting deleted it first
                await self._js.delete_consumer(self._stream, self.durable)
            info = None
        filters = sorted(info.config.filter_subjects or []) if info is not None else []
        wanted = [] if self._everything else sorted(self._filters)
        if info is not None and (
            info.config.ack_wait != self.ack_wait
            or filters != wanted
            or info.config.deliver_subject != deliver
        ):
            # A consumer made by an older master (ack_wait 60 s, a master's own inbox as deliver
            # subject): update it in place, keeping its position, so no event is skipped or
            # delivered twice; a master still on the old subject gets nothing until restarted.
            updated = info.config
            updated.ack_wait = self.ack_wait
            updated.deliver_subject = deliver
            if not self._everything:
                updated.filter_subjects = self._filters
                updated.filter_subject = None
            await self._js.add_consumer(self._stream, config=updated)
            log.info(
                "consumer %s updated (ack_wait %gs, deliver to %s)", self.durable, self.ack_wait, deliver
            )
        await self._js.subscribe(
            ">" if self._everything else subjects.EVENTS_SUBJECTS,  # ">": whatever the stream holds
            queue=self.durable,
            durable=self.durable,
            stream=self._stream,
            config=config,
            manual_ack=True,
            cb=self._deliver,
        )

    def _a_masters(self, config: api.ConsumerConfig) -> bool:
        """True if ``config`` is of a consumer a master made (this one or an older master)."""
        return (
            config.durable_name == self.durable
            and config.deliver_group == self.durable
            and config.ack_policy == api.AckPolicy.EXPLICIT
        )

    def _ours(self, msg: Msg) -> bool:
        """True if ``msg`` comes from this consumer (its ack subject names our stream and name).

        The deliver subject is fixed and known, and nats-server pushes any consumer's messages
        to the subject its creator chose: a role that may read the events stream (web, admin)
        could deliver every completion of the last 30 days here again (each failure notified
        again; chains and retries started again once their records expired). Another
        consumer's ack subject names that consumer, and no other role may use our names
        (``security._not_the_masters_consumers``).
        """
        try:
            metadata = msg.metadata
        except NotJSMessageError:
            metadata = None
        if metadata is not None and metadata.stream == self._stream and metadata.consumer == self.durable:
            return True
        quiet.log(
            logging.WARNING,
            "foreign delivery",
            "%s: message of %s from another consumer (%s) dropped",
            self.durable,
            subjects.shown(msg.subject),
            subjects.shown(msg.reply),
        )
        return False

    async def _deliver(self, msg: Msg) -> None:
        if not self._ours(msg):
            return  # not acknowledged either: it is no message of ours
        # The subscription's callbacks run one after another: hand the work to a task at once.
        task = asyncio.create_task(self._handle(msg), name=f"{self.durable}-event")
        self._inflight[task] = msg
        task.add_done_callback(lambda t: self._inflight.pop(t, None))

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:  # the handlers catch their own; this is the last line
            log.exception("%s: handling %s failed; it comes back", self.durable, msg.subject)

    async def run(self) -> None:
        """Tell the server every ``ack_wait / 3`` that the messages in hand are still ours."""
        try:
            while True:
                await asyncio.sleep(self.ack_wait / 3)
                for msg in list(self._inflight.values()):
                    try:
                        await msg.in_progress()
                    except Exception as exc:  # noqa: BLE001 - disconnected: it comes back to someone
                        log.debug("%s: in_progress for %s failed: %r", self.durable, msg.subject, exc)
        finally:
            tasks = list(self._inflight)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)


async def follow_events(
    js: JetStreamContext, durable: str, states: Iterable[RunState], handler: Callable[[Msg], Awaitable[None]]
) -> EventFollower:
    """Deliver the events of runs that reached one of ``states`` to ``handler`` (manual ack).

    The caller runs the returned follower's ``run()`` in a task it owns.
    """
    follower = EventFollower(js, durable, states, handler)
    await follower.start()
    return follower
