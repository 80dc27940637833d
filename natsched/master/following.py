"""Following run events with a durable consumer that every master shares.

The consumer is a queue group: each event goes to one master, and one that is not
acknowledged (the master died, or handling failed) comes back after ``ack_wait`` to
whichever master is there. Created with ``DeliverPolicy.NEW`` the first time; from then on
the server remembers the position, so events published while no master runs are delivered
when one starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from natsched import subjects

ACK_WAIT = 60.0


async def follow_events(
    js: JetStreamContext, durable: str, states: Iterable[str], handler: Callable[[Msg], Awaitable[None]]
) -> None:
    """Deliver the events of runs that reached one of ``states`` to ``handler`` (manual ack)."""
    config = api.ConsumerConfig(
        durable_name=durable,
        deliver_group=durable,
        deliver_policy=api.DeliverPolicy.NEW,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_ack_pending=1000,
        filter_subjects=[f"natsched.event.*.*.*.{state}" for state in states],
    )
    await js.subscribe(
        subjects.EVENTS_SUBJECTS,
        queue=durable,
        durable=durable,
        stream=subjects.EVENTS_STREAM,
        config=config,
        manual_ack=True,
        cb=handler,
    )
