"""Telling a notification target (a :class:`~natsched.models.Notify`) something, on every channel it names.

Shared by the master's run notifications (``natsched/master/notify.py``) and the agents'
sync reports (``agent/syncnotify.py``). Channels: a webhook (HTTP POST of the JSON body),
an e-mail (SMTP, the body pretty-printed) and a NATS subject (the JSON body). Each channel
is tried ``ATTEMPTS`` times with a growing pause; one that keeps failing is logged and
given up on. Nothing here raises: a notifier never stops what it reports on.
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

from natsched.models import Notify

log = logging.getLogger(__name__)
ATTEMPTS = 3
FIRST_PAUSE = 0.5
SEND_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    host: str = ""
    port: int = 25
    sender: str = "natsched@localhost"


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """What to tell: ``body`` (JSON) for webhooks and subjects, ``title`` for an e-mail's subject."""

    body: bytes
    title: str
    about: str  # for the log: what this message reports (e.g. "failure of run r1")


@dataclass(kw_only=True, slots=True)
class Tally:
    sent: int = 0
    given_up: int = 0


async def deliver(
    nc: Client | None, smtp: SmtpSettings, target: Notify, message: Message, tally: Tally
) -> None:
    """Send ``message`` on each channel ``target`` names; count what was sent and given up."""
    channels: list[tuple[str, Callable[[], Awaitable[object]]]] = []
    if target.webhook:
        channels.append(
            ("webhook " + target.webhook, lambda: asyncio.to_thread(_post, target.webhook, message.body))
        )
    if target.email:
        channels.append(
            ("e-mail " + target.email, lambda: asyncio.to_thread(_mail, smtp, target.email, message))
        )
    if target.subject:
        channels.append(("subject " + target.subject, lambda: _publish(nc, target.subject, message.body)))
    for what, send in channels:
        pause = FIRST_PAUSE
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await asyncio.wait_for(send(), SEND_TIMEOUT + 1)
                tally.sent += 1
                break
            except Exception as exc:  # noqa: BLE001 - any failure of a notifier is just logged
                if attempt == ATTEMPTS:
                    tally.given_up += 1
                    log.warning("%s %s: gave up after %d tries: %r", what, message.about, attempt, exc)
                else:
                    await asyncio.sleep(pause)
                    pause *= 2


async def _publish(nc: Client | None, subject: str, body: bytes) -> None:
    if nc is None:
        raise OSError("not connected to NATS yet")
    await nc.publish(subject, body)


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT) as reply:  # noqa: S310 - the operator's URL
        if reply.status >= 300:
            raise OSError(f"HTTP {reply.status}")


def _mail(smtp: SmtpSettings, to: str, message: Message) -> None:
    if not smtp.host:
        raise OSError("no SMTP host configured (--smtp-host)")
    mail = EmailMessage()
    mail["From"], mail["To"] = smtp.sender, to
    mail["Subject"] = message.title
    mail.set_content(json.dumps(json.loads(message.body), indent=2))
    with smtplib.SMTP(smtp.host, smtp.port, timeout=SEND_TIMEOUT) as client:
        client.send_message(mail)
