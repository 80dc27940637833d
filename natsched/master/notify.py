"""Notifications: a job's ``notify`` targets hear about its runs' outcomes.

Masters share a durable consumer (``natsched-notify``) on the final run events, so each
outcome is told once and none is missed while masters restart. Outcomes: ``success``
(succeeded), ``failure`` (failed, timed out, killed), ``lost``, ``chain_failed`` (a chain
step the master recorded failed: fan-in timeout, upstream ended the wrong way). Channels:
a webhook (HTTP POST of the event's JSON), an e-mail (SMTP, configured on the master) and a
NATS subject (the event's JSON). Each delivery is tried ``ATTEMPTS`` times with a growing
pause; a notifier that keeps failing is logged and given up on. Nothing here can hold up
or fail a run: the events are already stored when they arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage

from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched import subjects
from natsched.errors import CodecError
from natsched.events import RunEvent, parse_event
from natsched.groupsettings import GroupSettings, notify_targets
from natsched.master.following import EventFollower, follow_events
from natsched.master.jobindex import JobIndex
from natsched.master.retries import CHAIN_FAILURE
from natsched.models import Notify
from natsched.vocab import COMPLETED_STATES

log = logging.getLogger(__name__)
DURABLE = subjects.NOTIFY_DURABLE
ATTEMPTS = 3
FIRST_PAUSE = 0.5
SEND_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    host: str = ""
    port: int = 25
    sender: str = "natsched@localhost"


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
    ) -> None:
        self._nc = nc
        self._index = index
        self._groups = groups  # a job without targets of its own gets its group's
        self._smtp = smtp or SmtpSettings()
        self.sent = 0
        self.on_event: Callable[[RunEvent], None] = lambda event: None  # e.g. a metrics counter
        self.given_up = 0
        self.following: EventFollower | None = None

    async def start(self) -> None:
        self.following = await follow_events(self._nc.jetstream(), DURABLE, COMPLETED_STATES, self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        try:
            await self._index.ready.wait()
            event = parse_event(msg.data, msg.subject)
            self.on_event(event)
            spec = self._index.jobs.get(event.job)
            kind = outcome(event)
            group = self._groups(event.job.partition(".")[0])
            targets = [n for n in notify_targets(spec.notify if spec else (), group) if kind in n.on]
            await asyncio.gather(*(self._deliver(n, kind, event, msg.data) for n in targets))
        except CodecError:
            pass  # garbage is nobody's outcome
        except Exception:  # noqa: BLE001 - a notifier bug must never stop the follower
            log.exception("notification of %s failed", msg.subject)
        await msg.ack()

    async def _deliver(self, target: Notify, kind: str, event: RunEvent, body: bytes) -> None:
        channels: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if target.webhook:
            channels.append(
                ("webhook " + target.webhook, lambda: asyncio.to_thread(_post, target.webhook, body))
            )
        if target.email:
            channels.append(
                (
                    "e-mail " + target.email,
                    lambda: asyncio.to_thread(_mail, self._smtp, target.email, kind, event),
                )
            )
        if target.subject:
            channels.append(("subject " + target.subject, lambda: self._nc.publish(target.subject, body)))
        for what, send in channels:
            pause = FIRST_PAUSE
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    await asyncio.wait_for(send(), SEND_TIMEOUT + 1)
                    self.sent += 1
                    break
                except Exception as exc:  # noqa: BLE001 - any failure of a notifier is just logged
                    if attempt == ATTEMPTS:
                        self.given_up += 1
                        log.warning(
                            "%s %s of run %s: gave up after %d tries: %r",
                            what,
                            kind,
                            event.run_id,
                            attempt,
                            exc,
                        )
                    else:
                        await asyncio.sleep(pause)
                        pause *= 2


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT) as reply:  # noqa: S310 - the operator's URL
        if reply.status >= 300:
            raise OSError(f"HTTP {reply.status}")


def _mail(smtp: SmtpSettings, to: str, kind: str, event: RunEvent) -> None:
    if not smtp.host:
        raise OSError("no SMTP host configured on the master (--smtp-host)")
    message = EmailMessage()
    message["From"], message["To"] = smtp.sender, to
    message["Subject"] = f"natsched: {event.job} {kind} ({event.state.value} on {event.agent})"
    message.set_content(json.dumps(json.loads(event.to_json()), indent=2))
    with smtplib.SMTP(smtp.host, smtp.port, timeout=SEND_TIMEOUT) as client:
        client.send_message(message)
