"""A master started while JetStream does not answer yet (a cluster electing, a server coming up
without its JetStream) starts again until it does, instead of exiting at the first timeout."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from natsched.embedded import EmbeddedServer, find_binary, free_port, port_is_free
from tests.conftest import Process, wait_for_api

pytestmark = pytest.mark.faults


def test_a_master_waits_for_jetstream_to_answer_then_serves(
    tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    port = free_port()
    # The same port first answers as a nats-server without JetStream: every JetStream request
    # of the master's start meets "no responders", as during a cluster's election.
    plain = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = EmbeddedServer(data_dir=tmp_path / "nats", port=port, log_file=tmp_path / "nats.log")
    try:
        master = spawn("natsched", "master", url=server.url, log_name="master.log")
        deadline = time.monotonic() + 20
        while "starting again" not in master.output():
            assert master.popen.poll() is None, f"the master exited:\n{master.output()}"
            assert time.monotonic() < deadline, f"no retry announced:\n{master.output()}"
            time.sleep(0.1)
        plain.terminate()
        plain.wait(10)
        await_port_then_start(server)  # now with JetStream
        wait_for_api(server.url, master, 30)
        out = master.output()
        assert master.popen.poll() is None, out
        assert "could not start: JetStream did not answer" in out, out
        assert "Traceback" not in out, out
        assert master.terminate() == 0, master.output()
    finally:
        plain.kill()
        plain.wait()
        server.stop()


def await_port_then_start(server: EmbeddedServer) -> None:
    """The plain server's port may take a moment to be free again on a loaded machine."""
    deadline = time.monotonic() + 15
    while not port_is_free(server.host, server.port) and time.monotonic() < deadline:
        time.sleep(0.1)
    server.start()


def test_a_master_starting_again_stops_at_once_on_sigterm(
    tmp_path: Path, spawn: Callable[..., Process]
) -> None:
    port = free_port()
    plain = subprocess.Popen(
        [find_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        master = spawn("natsched", "master", url=f"nats://127.0.0.1:{port}", log_name="master.log")
        deadline = time.monotonic() + 20
        while master.output().count("starting again") < 2:  # in the retry loop
            assert master.popen.poll() is None and time.monotonic() < deadline, master.output()
            time.sleep(0.05)
        asked = time.monotonic()
        assert master.terminate(timeout=8) == 0, master.output()
        assert time.monotonic() - asked < 3, master.output()
        assert "Traceback" not in master.output()
    finally:
        plain.kill()
        plain.wait()
