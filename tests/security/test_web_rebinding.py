"""Attack: a web page elsewhere drives ``natsched web`` on localhost through DNS rebinding.

``natsched web`` without a login answers only connections from localhost. A page on
``evil.example`` whose name the attacker then points at 127.0.0.1 is, for the browser on
the operator's machine, still the page's own origin: its requests come from localhost, carry
``Host: evil.example:8470`` and a matching ``Origin``, so the same-origin check passed, the
page read the CSRF token from ``/api/session``, every job and run output, and acted (pause,
run) with the operator's admin login.
"""

from __future__ import annotations

from starlette.testclient import TestClient

from natsched.embedded import EmbeddedServer
from natsched.settings import ConnectionSettings
from natsched.web.app import WebConfig, create_app
from natsched.web.auth import Auth
from tests.conftest import Process

LOCAL = ("127.0.0.1", 50000)
REBOUND = {"Host": "evil.example:8470", "Origin": "http://evil.example:8470"}


def client(url: str, auth: Auth | None = None) -> TestClient:
    config = WebConfig(
        connection=ConnectionSettings(url=url, connect_timeout=2), auth=auth or Auth(), actions=True
    )
    return TestClient(create_app(config), client=LOCAL, base_url="http://127.0.0.1:8470")


def test_a_rebound_host_name_gets_nothing_from_a_web_view_without_login(
    nats_server: EmbeddedServer, master_process: Process
) -> None:
    with client(nats_server.url) as web:
        for path in ("/", "/api/session", "/api/overview", "/api/jobs"):
            reply = web.get(path, headers=REBOUND)
            assert reply.status_code == 403, (path, reply.text)
            assert "host" in reply.json()["error"], reply.text
        # The token of a real local session does not help either.
        csrf = web.get("/api/session").json()["csrf"]
        acted = web.post(
            "/api/actions/pause", json={"agent": "a1"}, headers={**REBOUND, "X-CSRF-Token": csrf}
        )
        assert acted.status_code == 403, acted.text
        # The operator's own browser still works, by name or address.
        for host in ("localhost:8470", "127.0.0.1:8470", "[::1]:8470"):
            assert web.get("/api/overview", headers={"Host": host}).status_code == 200, host

    # With a login (and TLS or a proxy off localhost) the login guards a named host: no host check.
    with client(nats_server.url, Auth(token="t" * 20)) as web:
        assert web.get("/login", headers={"Host": "natsched.example.com"}).status_code == 200
