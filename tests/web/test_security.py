"""The web view's guards, without a browser: who may look, who may act, what never leaves.

Real nats-server and master process; the app runs in Starlette's TestClient, which lets a
test say which address the client comes from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from starlette.testclient import TestClient

from natsched import security, subjects
from natsched.embedded import EmbeddedServer, free_port
from natsched.errors import ConfigError
from natsched.settings import ConnectionSettings
from natsched.web.app import WebConfig, create_app
from natsched.web.auth import Auth, check_exposure, hash_password, read_users
from tests.conftest import Process
from tests.helpers import apply, job, toml_jobs

LOCAL = ("127.0.0.1", 50000)
BASE = "http://127.0.0.1:8470"  # without a login only a loopback Host is served (DNS rebinding)


def client(
    url: str, *, actions: bool = True, auth: Auth | None = None, peer: tuple[str, int] = LOCAL
) -> TestClient:
    config = WebConfig(
        connection=ConnectionSettings(url=url, connect_timeout=2), auth=auth or Auth(), actions=actions
    )
    return TestClient(create_app(config), client=peer, base_url=BASE)


def test_anyone_off_localhost_is_refused_without_a_login(nats_server: EmbeddedServer) -> None:
    with client(nats_server.url, peer=("192.0.2.7", 40000)) as web:
        for path in ("/", "/api/overview", "/api/session", "/api/live"):
            reply = web.get(path)
            assert reply.status_code == 403, path
            assert reply.json() == {"error": "natsched web without a login answers only localhost"}


def test_with_a_login_every_page_needs_a_session(nats_server: EmbeddedServer) -> None:
    auth = Auth(token="t" * 20)
    with client(nats_server.url, auth=auth) as web:
        assert web.get("/api/overview").status_code == 401
        assert web.get("/jobs", follow_redirects=False).headers["location"] == "/login"
        assert web.post("/login", data={"password": "wrong"}, follow_redirects=False).headers["location"] == (
            "/login?failed=1"
        )
        ok = web.post("/login", data={"user": "ops", "password": "t" * 20}, follow_redirects=False)
        assert ok.headers["location"] == "/"
        assert web.get("/api/session").json()["user"] == "ops"
        forged = auth.new_session("ops").rsplit("|", 1)[0] + "|" + "0" * 64  # a signature that does not match
        web.cookies.clear()
        web.cookies.set("natsched_session", forged)
        assert web.get("/api/overview").status_code == 401


def test_actions_need_the_csrf_token_the_same_origin_and_actions_on(
    nats_server: EmbeddedServer, master_process: Process
) -> None:
    with client(nats_server.url) as web:
        csrf = web.get("/api/session").json()["csrf"]
        body = {"agent": "a1"}
        assert web.post("/api/actions/pause", json=body).status_code == 403  # no token
        wrong = web.post("/api/actions/pause", json=body, headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        other_site = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        assert web.post("/api/actions/pause", json=body, headers=other_site).status_code == 403
        ok = web.post("/api/actions/pause", json=body, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["paused"] == "a1"
        # The API's one-line error reaches the page.
        missing = web.post("/api/actions/resume", json={"job": "nope.nope"}, headers={"X-CSRF-Token": csrf})
        assert missing.status_code == 400 and missing.json() == {"error": "nope.nope is not paused"}
    with client(nats_server.url, actions=False) as web:
        csrf = web.get("/api/session").json()["csrf"]
        refused = web.post("/api/actions/resume", json=body, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]


def test_no_secret_value_reaches_the_browser(nats_server: EmbeddedServer, master_process: Process) -> None:
    async def define() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            env = {"DB_PASSWORD": "hunter2-plain", "API": "${secret:api}", "MODE": "fast"}
            notify = [{"on": ["failure"], "webhook": "https://hooks.example/T000/very-secret-path"}]
            reply = await apply(nc, toml_jobs(job("j", env=env, notify=notify), group="sec"))
            assert reply["ok"], reply
        finally:
            await nc.close()

    asyncio.run(define())
    with client(nats_server.url) as web:
        page = web.get("/api/jobs/sec.j")
        assert page.status_code == 200
        text = page.text
        assert "hunter2-plain" not in text and "very-secret-path" not in text
        spec = page.json()["spec"]
        assert spec["env"] == {"DB_PASSWORD": "***", "API": "${secret:api}", "MODE": "fast"}
        assert spec["notify"][0]["webhook"] == "https://hooks.example/***"
        assert "content-security-policy" in page.headers and page.headers["x-frame-options"] == "DENY"


def test_bad_input_is_one_line_and_changes_nothing(
    nats_server: EmbeddedServer, master_process: Process
) -> None:
    with client(nats_server.url) as web:
        assert web.get("/api/runs/not-a-run-id").json() == {
            "error": "'not-a-run-id' is not a natsched run id"
        }
        assert web.get("/api/timeline?start=x").json()["error"].startswith("query parameter 'start'")
        csrf = web.get("/api/session").json()["csrf"]
        bad = web.post("/api/actions/run", json={"job": "a.b.c>"}, headers={"X-CSRF-Token": csrf})
        assert bad.status_code == 400 and "job name" in bad.json()["error"]
        unknown = web.post("/api/actions/explode", json={}, headers={"X-CSRF-Token": csrf})
        assert unknown.status_code == 400 and unknown.json()["error"].startswith("no action 'explode'")
        assert web.get("/api/overview").status_code == 200  # still serving


def test_off_localhost_needs_a_login_and_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give a login"):
        check_exposure("0.0.0.0", Auth(), tls=True, behind_proxy=False)
    with pytest.raises(ConfigError, match="--tls-cert|--https-cert|behind-proxy"):
        check_exposure("0.0.0.0", Auth(token="t" * 20), tls=False, behind_proxy=False)
    with pytest.raises(ConfigError, match="--behind-proxy needs a login"):
        check_exposure("127.0.0.1", Auth(), tls=False, behind_proxy=True)
    check_exposure("127.0.0.1", Auth(), tls=False, behind_proxy=False)
    check_exposure("0.0.0.0", Auth(token="t" * 20), tls=True, behind_proxy=False)
    users = tmp_path / "users"
    users.write_text(f"# operators\nops:{hash_password('correct horse')}\n")
    auth = Auth(users=read_users(users))
    assert auth.check_login("ops", "correct horse") == "ops"
    assert auth.check_login("ops", "wrong horse") is None
    users.write_text("ops:plaintext\n")
    with pytest.raises(ConfigError, match="natsched web password"):
        read_users(users)


def test_the_web_role_reads_every_page_and_cannot_start_a_job(tmp_path: Path) -> None:
    users = {
        "natsched-master": ("m-pw", security.master()),
        "natsched-web": ("w-pw", security.web()),
    }
    server = EmbeddedServer(
        data_dir=tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats.log",
        extra_config=security.users_block(users),
    )  # fmt: skip
    with server:
        env = {"NATS_USER": "natsched-master", "NATS_PASSWORD": "m-pw"}
        master = _master(server.url, env, tmp_path)
        try:
            conn = ConnectionSettings(url=server.url, user="natsched-web", password="w-pw", connect_timeout=2)
            with TestClient(
                create_app(WebConfig(connection=conn, actions=True)), client=LOCAL, base_url=BASE
            ) as web:
                for path in ("/api/overview", "/api/jobs", "/api/runs", "/api/timeline"):
                    assert web.get(path).status_code == 200, (path, web.get(path).text)
        finally:
            master.terminate()

        async def trigger_as_web() -> list[str]:
            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc))

            nc = await nats.connect(server.url, user="natsched-web", password="w-pw", error_cb=on_error)
            try:
                await nc.publish(subjects.trigger_subject("any.job"), b"{}")
                await nc.flush()
                await asyncio.sleep(0.3)
            finally:
                await nc.close()
            return errors

        errors = asyncio.run(trigger_as_web())
        assert any("permissions violation" in e.lower() for e in errors), errors


def _master(url: str, env: dict[str, str], tmp_path: Path) -> Process:
    import os
    import sys

    from tests.conftest import wait_for_api

    process = Process(
        [str(Path(sys.executable).parent / "natsched"), "master"],
        {**os.environ, "NATS_URL": url, **env},
        tmp_path / "master.log",
    )
    nc_url = url.replace("nats://", "nats://natsched-master:m-pw@")
    wait_for_api(nc_url, process)
    return process
