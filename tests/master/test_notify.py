"""Notifications: webhook, NATS subject and e-mail on failure; a dead notifier breaks nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import free_port
from natsched.master.service import MasterService
from natsched.senders import SmtpSettings
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


@pytest.fixture
async def smtp_sink() -> AsyncIterator[tuple[int, list[str]]]:
    """The least SMTP server that accepts one message per connection and keeps its text."""
    mails: list[str] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink\r\n")
        data: list[str] = []
        in_data = False
        while line := (await reader.readline()).decode():
            if in_data:
                if line == ".\r\n":
                    in_data = False
                    mails.append("".join(data))
                    writer.write(b"250 ok\r\n")
                else:
                    data.append(line)
                continue
            verb = line[:4].upper()
            if verb == "DATA":
                in_data = True
                writer.write(b"354 go\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], mails
    server.close()
    await server.wait_closed()


async def test_a_failed_run_is_told_to_every_channel_and_a_dead_one_changes_nothing(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    webhook: tuple[str, list[dict[str, Any]]],
    smtp_sink: tuple[int, list[str]],
) -> None:
    url, posted = webhook
    port, mails = smtp_sink
    alerts: list[dict[str, Any]] = []

    async def on_alert(msg: Any) -> None:
        alerts.append(json.loads(msg.data))

    await nc.subscribe("ops.alerts", cb=on_alert)
    async with MasterService(conn, smtp=SmtpSettings(host="127.0.0.1", port=port)) as master:
        await start_agent("n1")
        dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
        await apply(
            nc,
            toml_jobs(
                job(
                    "flaky",
                    mode="slave",
                    targets={"agents": ["n1"]},
                    command=["sh", "-c", "exit 3"],
                    notify=[
                        {"webhook": dead},
                        {
                            "on": ["failure"],
                            "webhook": url,
                            "subject": "ops.alerts",
                            "email": "ops@example.org",
                        },
                    ],
                ),
                job("fine", mode="slave", targets={"agents": ["n1"]}, notify=[{"webhook": url}]),
                group="nt",
            ),
        )
        await nc.request("natsched.trigger.nt.flaky", b"{}", timeout=10)
        await nc.request("natsched.trigger.nt.fine", b"{}", timeout=10)

        async def told() -> bool:
            return bool(posted and alerts and mails)

        await eventually(told, 15, "webhook, subject and e-mail told")
        assert (
            posted[0]["job"] == "nt.flaky" and posted[0]["state"] == "failed" and posted[0]["exit_code"] == 3
        )
        assert alerts[0]["run_id"] == posted[0]["run_id"]
        assert "Subject: natsched: nt.flaky failure (failed on n1)" in mails[0]

        assert master.notifier is not None
        await eventually(lambda: _gave_up(master), 15, "the dead webhook was given up on")
        await asyncio.sleep(0.5)
        assert [p["job"] for p in posted] == ["nt.flaky"], "a success is not a failure outcome"
        states = [e["state"] for e in await stream_events(nc) if e["job"] == "nt.flaky"]
        assert states == ["started", "failed"], "notifications never touch the run"


async def _gave_up(master: MasterService) -> bool:
    return master.notifier is not None and master.notifier.given_up == 1


async def test_a_job_without_targets_gets_its_groups_and_its_own_replace_them(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, posted = webhook
    alerts: list[dict[str, Any]] = []

    async def on_alert(msg: Any) -> None:
        alerts.append(json.loads(msg.data))

    await nc.subscribe("ops.group-alerts", cb=on_alert)
    async with MasterService(conn):
        await start_agent("n1")
        settings = {"notify": [{"subject": "ops.group-alerts", "on": ["failure", "success"]}]}
        reply = await api(nc, subjects.API_SETTINGS_SET, {"group": "ng", "settings": settings})
        assert reply["ok"] and reply["settings"]["notify"] == settings["notify"], reply
        failing = ["sh", "-c", "exit 4"]
        slave = {"mode": "slave", "targets": {"agents": ["n1"]}}
        await apply(
            nc,
            toml_jobs(
                job("plain", command=failing, **slave),
                job("own", command=failing, notify=[{"webhook": url}], **slave),
                group="ng",
            ),
        )
        for name in ("plain", "own"):
            await nc.request(f"natsched.trigger.ng.{name}", b"{}", timeout=10)

        async def told() -> bool:
            return bool(alerts and posted)

        await eventually(told, 15, "the group's subject and the job's own webhook told")
        await asyncio.sleep(0.5)  # room for a wrong extra notification to arrive
        assert [(a["job"], a["state"]) for a in alerts] == [("ng.plain", "failed")]
        assert [p["job"] for p in posted] == ["ng.own"], "a job's own targets replace the group's"

        reply = await api(nc, subjects.API_SETTINGS_DELETE, {"group": "ng"})
        assert reply["ok"], reply
        await asyncio.sleep(0.3)  # the master's settings watch takes the delete in
        await nc.request("natsched.trigger.ng.plain", b"{}", timeout=10)

        async def three_runs() -> bool:
            failed = [
                e for e in await stream_events(nc) if e["job"].startswith("ng.") and e["state"] == "failed"
            ]
            return len(failed) == 3

        await eventually(three_runs, 15, "the third run failed")
        await asyncio.sleep(0.5)
        assert len(alerts) == 1, "without group settings a job without targets tells nobody"
