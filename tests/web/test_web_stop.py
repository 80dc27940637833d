"""``natsched web`` stops like the other services: one line and exit 1 without NATS, exit 0 on
SIGTERM (it was killed by the signal uvicorn raised again after its clean stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from natsched.embedded import EmbeddedServer, free_port

NATSCHED = str(Path(sys.executable).parent / "natsched")


def _web(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [NATSCHED, "web", "--listen", f"127.0.0.1:{port}"],
            env={**os.environ, "NATS_URL": url},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_web_without_nats_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    web = _web(f"nats://127.0.0.1:{free_port()}", free_port(), log)
    try:
        code = web.wait(30)
    finally:
        if web.poll() is None:
            web.kill()
    out = log.read_text()
    assert code == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach NATS" in errors[0], out


def test_web_stops_on_sigterm_with_exit_0(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    log, port = tmp_path / "web.log", free_port()
    web = _web(nats_server.url, port, log)
    try:
        deadline = time.monotonic() + 20
        while True:  # serving: the login page answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and web.poll() is None, log.read_text()
                time.sleep(0.1)
        web.send_signal(signal.SIGTERM)
        code = web.wait(10)
    finally:
        if web.poll() is None:
            web.kill()
    out = log.read_text()
    assert code == 0 and "Traceback" not in out, (code, out)
