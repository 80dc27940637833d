"""``natsched-agent --check``: is this agent ready to run? One line per check, stop at the first failure.

Checks: the config, the state directory, the connection (bounded), reading the jobs
bucket, writing this agent's heartbeat key (refused, as the agent would be, while a live
agent elsewhere has the name), and subscribing to its run subject. The last
two are what the agent's credential must allow for *this* name: an agent claiming another
agent's name is refused there, in one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client

from agent import nameguard
from agent.config import AgentConfig
from agent.heartbeat import sample_load
from natsched import codec, subjects
from natsched.connection import connect
from natsched.errors import CheckFailed, NameTakenError, NatschedError
from natsched.kvscan import scan
from natsched.settings import ConnectionSettings

SETTLE = 0.5  # how long to wait for the server's asynchronous permission errors


async def run_checks(config: AgentConfig, settings: ConnectionSettings, say: Callable[[str], None]) -> None:
    tags, pools = ",".join(sorted(config.tags)) or "-", ",".join(sorted(config.pools)) or "-"
    say(f"ok   config: agent {config.name}, tags {tags}, pools {pools}")
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        probe = config.state_dir / ".natsched-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CheckFailed(f"state dir {config.state_dir} is not writable: {exc.strerror}") from None
    say(f"ok   state dir {config.state_dir} is writable")
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await connect(settings.with_inbox(subjects.agent_inbox(config.name)), on_error=on_error)
    try:
        say(f"ok   connected to {nc.connected_url.netloc if nc.connected_url else settings.describe()}")
        js = nc.jetstream()
        try:
            jobs = await scan(js, subjects.JOBS_BUCKET, timeout=5)
        except Exception as exc:  # noqa: BLE001 - any reason is the same failed check
            # Another agent's credential may not even read replies on this agent's inbox.
            await asyncio.sleep(SETTLE)
            _raise_denied(errors, config.name)
            raise CheckFailed(f"cannot read the jobs bucket: {exc or type(exc).__name__}") from None
        say(f"ok   read the jobs bucket ({len(jobs)} definitions)")
        await _heartbeat(nc, config, errors)
        say(f"ok   wrote heartbeat key {subjects.AGENTS_BUCKET}/{config.name}")
        run_subject = subjects.agent_run_subject(config.name)
        sub = await nc.subscribe(run_subject)
        await nc.flush(timeout=2)
        await asyncio.sleep(SETTLE)
        await sub.unsubscribe()
        _raise_denied(errors, config.name)
        say(f"ok   subscribed to {run_subject}")
    finally:
        await nc.close()


async def _heartbeat(nc: Client, config: AgentConfig, errors: list[str]) -> None:
    heartbeat = sample_load(
        agent=config.name,
        started_at=0.0,
        running=0,
        max_concurrency=config.max_concurrency,
        tags=config.tags,
        pools=config.pools,
        groups=config.groups,
        jobs_cached=0,
        synced_revision=0,
        connected_since=0.0,
        priority=config.priority,
    )
    try:
        kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        # Written as the agent would (refused while a live agent has the name), then deleted, so
        # the probe is not taken for a live agent.
        data = codec.encode_heartbeat(heartbeat)
        revision = await asyncio.wait_for(nameguard.take(kv, heartbeat, data), 3)
        await asyncio.wait_for(kv.delete(config.name, last=revision), 3)
    except NameTakenError:
        raise
    except Exception as exc:  # noqa: BLE001 - a denied publish shows up as a timeout plus an error
        await asyncio.sleep(SETTLE)
        _raise_denied(errors, config.name)
        raise CheckFailed(f"cannot write heartbeat key {config.name}: {exc or type(exc).__name__}") from None


def _raise_denied(errors: list[str], name: str) -> None:
    denied = [e for e in errors if "permissions violation" in e.lower()]
    if denied:
        raise CheckFailed(f"credential does not allow agent name {name!r} ({denied[0].strip()})")


def check_exit_code(config: AgentConfig, settings: ConnectionSettings) -> int:
    """Run the checks, print the lines; 0 when all pass, 1 with the reason otherwise."""
    # The check lines say what failed; the connection's own warnings would only repeat it.
    logging.getLogger("natsched.connection").setLevel(logging.ERROR)
    try:
        asyncio.run(run_checks(config, settings, print))
    except NatschedError as exc:
        print(f"FAIL {exc}")
        return 1
    print(f"agent {config.name} is ready")
    return 0
