"""Notifications: a job's ``notify`` targets hear about its runs' outcomes.

Masters share a durable consumer (``natsched-notify``) on the final run events, so each
outcome is told once and none is missed while masters restart. Outcomes: ``success``
(succeeded), ``failure`` (failed, timed out, killed), ``lost``, ``chain_failed`` (a chain
step the master recorded failed: fan-in timeout, upstream ended the wrong way). Channels
(``natsched/senders.py``): a webhook (HTTP POST of the event's JSON), an e-mail (SMTP,
configured on the master) and a NATS subject (the event's JSON), each retried a few times,
then given up on. Nothing here can hold up or fail a run: the events are already stored
when they arrive. A job without targets of its own gets its group's (group settings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched import subjects
from natsched.errors import CodecError
from natsched.events import RunEvent, parse_event
from natsched.groupsettings import GroupSettings, notify_targets
from natsched.master.following import EventFollower, follow_events
from natsched.master.jobindex import JobIndex
from natsched.master.retries import CHAIN_FAILURE
from natsched.models import JobSpec, Notify
from natsched.senders import Message, SmtpSettings, Tally, deliver
from natsched.vocab import COMPLETED_STATES

log = logging.getLogger(__name__)
DURABLE = subjects.NOTIFY_DURABLE


def outcome(event: RunEvent) -> str:
    if CHAIN_FAILURE in event.detail:
        return "chain_failed"
    return event.state.outcome


class Notifier:
    def __init__(
        self,
        nc: Client,
        index: JobIndex,
        smtp: SmtpSettings | None = None,
        groups: Callable[[str], GroupSettings | None] = lambda group: None,
        could_run: Callable[[JobSpec, str], bool] = lambda spec, agent: True,
    ) -> None:
        self._nc = nc
        self._index = index
        # An agent publishes events of any job under its own name: only the runs of an agent
        # the job targets are told (AgentDirectory.could_run), not made-up ones with its text.
        self._could_run = could_run
        self._groups = groups  # a job without targets of its own gets its group's
        self._smtp = smtp or SmtpSettings()
        self.on_event: Callable[[RunEvent], None] | None = None  # e.g. a metrics counter
        self._tally = Tally()
        self.following: EventFollower | None = None

    async def start(self) -> None:
        self.following = await follow_events(self._nc.jetstream(), DURABLE, COMPLETED_STATES, self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        try:
            await self._index.ready.wait()
            job = subjects.event_job(msg.subject)
            if job is not None and self.on_event is None and not self._targets(job):
                await msg.ack()  # nobody to tell, nothing to count: not worth decoding
                return
            event = parse_event(msg.data, msg.subject)
            if self.on_event is not None:
                self.on_event(event)
            kind = outcome(event)
            targets = [n for n in self._targets(event.job) if kind in n.on]
            spec = self._index.jobs.get(event.job)
            if targets and (spec is None or not self._could_run(spec, event.agent)):
                log.warning(
                    "outcome of run %s of %s on %s not told: the job does not target that agent",
                    event.run_id,
                    event.job,
                    event.agent,
                )
                targets = []
            await asyncio.gather(*(self._deliver(n, kind, event, msg.data) for n in targets))
        except CodecError:
            pass  # garbage is nobody's outcome
        except Exception:  # noqa: BLE001 - a notifier bug must never stop the follower
            log.exception("notification of %s failed", msg.subject)
        await msg.ack()

    def _targets(self, job: str) -> tuple[Notify, ...]:
        spec = self._index.jobs.get(job)
        return notify_targets(spec.notify if spec else (), self._groups(job.partition(".")[0]))

    async def _deliver(self, target: Notify, kind: str, event: RunEvent, body: bytes) -> None:
        title = f"natsched: {event.job} {kind} ({event.state.value} on {event.agent})"
        message = Message(body=body, title=title, about=f"{kind} of run {event.run_id}")
        await deliver(self._nc, self._smtp, target, message, self._tally)

    @property
    def sent(self) -> int:
        return self._tally.sent

    @property
    def given_up(self) -> int:
        return self._tally.given_up
