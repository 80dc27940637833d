"""Attack: the read-only web role stops every chain, retry and notification.

To read the events stream a role may create and delete consumers on it
(``$JS.API.CONSUMER.CREATE|DELETE.NATSCHED_EVENTS.>``). The masters' shared durable consumers
live on that stream under fixed names (``natsched-chains``, ``-retries``, ``-notify``): the web
role could delete them (the masters' subscriptions then get nothing until a master restarts) or
create them again with its own deliver subject (every completion goes to the web role, none to a
master). Chains, retries and notifications stopped. Permissions now refuse those names to every
role but the master.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from natsched import subjects
from natsched.client import AdminClient
from tests.conftest import eventually
from tests.helpers import has_lines, job, toml_jobs
from tests.security.hostile import Secured, violations

DURABLES = (subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE, subjects.NOTIFY_DURABLE)


async def test_no_role_but_a_master_can_delete_or_redirect_the_masters_consumers(
    secured: Secured, tmp_path: Path
) -> None:
    down = tmp_path / "down.txt"
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job("up", mode="slave", targets={"agents": ["a1"]}),
                    job(
                        "down",
                        mode="slave",
                        targets={"agents": ["a1"]},
                        command=["sh", "-c", f'echo "$NATSCHED_RUN_ID" >> {down}'],
                        triggers=[{"after": ["sec.up"]}],
                    ),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply
        stream = subjects.EVENTS_STREAM
        for user in ("natsched-web", "natsched-admin"):
            errors: list[str] = []
            nc = await secured.connect(user, errors=errors)
            for durable in DURABLES:
                # Delete it, and make it again delivering to this role's own inbox.
                await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{durable}", b"")
                config = {
                    "durable_name": durable,
                    "deliver_subject": f"{subjects.WEB_INBOX}.stolen",
                    "deliver_policy": "new",
                    "ack_policy": "none",
                }
                body = json.dumps({"stream_name": stream, "config": config}).encode()
                await nc.publish(f"$JS.API.CONSUMER.CREATE.{stream}.{durable}", body)
                await nc.publish(f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.natsched.event.>", body)
            await nc.flush()
            await asyncio.sleep(0.3)
            for durable in DURABLES:
                for subject in (
                    f"$JS.API.CONSUMER.DELETE.{stream}.{durable}",
                    f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
                ):
                    assert violations(errors, subject), (user, subject, errors)

        master = (await secured.connect("natsched-master")).jetstream()
        for durable in DURABLES:
            info = await master.consumer_info(stream, durable)
            assert info.config.deliver_subject == subjects.master_deliver_subject(durable)
        # The chain still runs.
        answer = await admin.nc.request(subjects.trigger_subject("sec.up"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: has_lines(down, 1), 15, "sec.up's completion started sec.down")
