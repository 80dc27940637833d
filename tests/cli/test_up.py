"""``natsched up`` end to end: server, master and agent as real processes, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from natsched.embedded import EmbeddedServer, free_port

NATSCHED = str(Path(sys.executable).parent / "natsched")


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text(errors="replace")
        if text in out:
            return out
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen within {timeout}s; output so far:\n{path.read_text()}")


def _web_answers(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                assert reply.status == 200
                return
        except OSError:
            assert time.monotonic() < deadline, f"the web view at {url} did not answer"
            time.sleep(0.2)


def test_up_runs_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    out_file = tmp_path / "up.out"
    port, web_port = free_port(), free_port()
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("NATS_URL", None)
    with open(out_file, "wb") as out:
        up = subprocess.Popen(
            [
                NATSCHED,
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--agent-name",
                "local",
                "--web-listen",
                f"127.0.0.1:{web_port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_for(out_file, "agent local joined", up)
        _wait_for(out_file, "3 created", up)
        _wait_for(out_file, "agent local synced: 3 job(s) cached", up)
        _wait_for(out_file, f"web view on http://127.0.0.1:{web_port}/", up)
        _web_answers(f"http://127.0.0.1:{web_port}/api/session")
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3  # nats-server, master, agent
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert "stopped" in out_file.read_text()
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left running: {alive}"
    assert "Traceback" not in out_file.read_text()


def test_second_up_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with EmbeddedServer(data_dir=tmp_path / "other", port=free_port()) as busy:
        result = subprocess.run(
            [NATSCHED, "up", "--port", str(busy.port), "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
        )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {busy.port}" in lines[0] and "busy" in lines[0], result.stderr
