"""What the fault tests share: jobs that leave a witness line when they really run, agents as
real processes, and waiting for the master to see them.

A witness line is ``<run id> <agent>`` (or ``start``/``end`` before the ``>>``, see
:func:`witnessed`), appended by the job itself: what really executed, not what events say.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from natsched import codec, subjects
from natsched.master.service import MasterService
from tests.conftest import Process, eventually
from tests.helpers import apply, job, stream_events, toml_jobs
from tests.master.test_chains import trigger

WITNESS_LINE = 'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {path}'


def witness_job(name: str, witness: Path, **fields: Any) -> dict[str, Any]:
    """A job whose every execution appends ``<run id> <agent>`` to ``witness``."""
    return job(name, command=["sh", "-c", WITNESS_LINE.format(path=witness)], **fields)


def witnessed(seconds: float | Path, witness: Path) -> list[str]:
    """A job that says when it really starts and ends (with a child, as most scripts have);
    it sleeps ``seconds``, or as long as the file ``seconds`` says when it starts."""
    line = WITNESS_LINE.format(path=witness)
    sleep = f"sleep $(cat {seconds})" if isinstance(seconds, Path) else f"sleep {seconds}"
    return ["sh", "-c", f"{line.replace('>>', 'start >>')}; {sleep}; {line.replace('>>', 'end >>')}"]


def executions(witness: Path) -> list[tuple[str, ...]]:
    """The witness file's lines, split: ``(run id, agent)`` or ``(run id, agent, start|end)``."""
    if not witness.exists():
        return []
    return [tuple(line.split()) for line in witness.read_text().splitlines() if line.strip()]


def start_lines(witness: Path) -> list[tuple[str, ...]]:
    """The ``(run id, agent, "start")`` lines of a :func:`witnessed` job: every run that began."""
    return [line for line in executions(witness) if line[2:] == ("start",)]


def started_agents(witness: Path) -> list[str]:
    """The agents that began a run of a :func:`witnessed` job, in order (one per start)."""
    return [line[1] for line in start_lines(witness)]


def agent_process(
    spawn: Callable[..., Process], url: str, name: str, state: Path, *args: str, priority: int | None = None
) -> Process:
    """``natsched-agent --name NAME`` as a real process, heartbeating every 0.5 s."""
    # A run still going at the test's end is not waited for (the 10 s default grace).
    env = {"NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5", "NATSCHED_AGENT_SHUTDOWN_GRACE": "1"}
    if priority is not None:
        env["NATSCHED_AGENT_PRIORITY"] = str(priority)
    return spawn(
        "natsched-agent", "--name", name, "--state-dir", str(state), *args,
        url=url, log_name=f"agent-{name}.log", env=env,
    )  # fmt: skip


# The lost-run tests' pool: a load-balance run of pool p goes to a1 first (priority 1); when a1
# is lost with it, b1 is where it runs again.
POOL = "p"
PRIORITIES = {"a1": 1, "b1": 2}


def pool_agent(spawn: Callable[..., Process], url: str, tmp_path: Path, name: str) -> Process:
    """Agent ``name`` (a1 or b1) of pool p as a real process, its state in ``tmp_path/name``:
    its first start, or its restart on the same state."""
    return agent_process(spawn, url, name, tmp_path / name, "--pool", POOL, priority=PRIORITIES[name])


def pool_pair(spawn: Callable[..., Process], url: str, tmp_path: Path) -> Process:
    """a1 and b1 of pool p (:func:`pool_agent`); a1, the one the tests kill, freeze or restart."""
    a1 = pool_agent(spawn, url, tmp_path, "a1")
    pool_agent(spawn, url, tmp_path, "b1")
    return a1


def lost_job(name: str, witness: Path, seconds: float | Path = 30, **fields: Any) -> dict[str, Any]:
    """A load-balance job of pool p, started again when lost (``redispatch_lost``), whose runs
    last ``seconds`` and say in ``witness`` when they really start and end (:func:`witnessed`)."""
    return job(
        name, mode="load-balance", targets={"pools": [POOL]}, command=witnessed(seconds, witness),
        redispatch_lost=True, **fields,
    )  # fmt: skip


async def run_on_a1(nc: Client, spec: dict[str, Any], group: str) -> dict[str, Any]:
    """Apply ``spec`` in ``group`` and trigger it once: the reply's run, which went to a1."""
    assert (await apply(nc, toml_jobs(spec, group=group)))["ok"]
    runs: list[dict[str, Any]] = (await trigger(nc, f"{group}.{spec['name']}"))["runs"]
    [run] = runs
    assert run["agent"] == "a1", run
    return run


async def seen_by(master: MasterService, *names: str, timeout: float = 20, proven: bool = True) -> None:
    """Until ``master`` sees every one of ``names`` heartbeating, with every pool its heartbeat
    names proven (unless not ``proven``): an agent whose membership was not read yet is sent no
    load-balance run by name, so a test expecting the run on it (its priority) would see it go
    elsewhere."""

    async def all_live() -> bool:
        directory = master.dispatcher.directory if master.dispatcher else None
        if directory is None or master.nc is None:
            return False
        agents = await master.nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        for name in names:
            seen = directory.get(name)
            if seen is None:
                return False
            written = codec.decode_heartbeat((await agents.get(name)).value or b"", name)
            if proven and not set(written.pools) <= set(seen.pools):
                return False
        return True

    await eventually(all_live, timeout, f"the master sees {names} heartbeating, their pools proven")


@contextmanager
def frozen(process: Process) -> Iterator[None]:
    """SIGSTOP the process for the block, SIGCONT after."""
    os.kill(process.popen.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.popen.pid, signal.SIGCONT)


async def events_of(nc: Client, key: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key]


async def started_on(witness: Path, agent: str) -> bool:
    """For ``eventually``: did ``agent`` start a run of the witnessed job?"""
    return any(line[1:] == (agent, "start") for line in executions(witness))


async def recorded(nc: Client, key: str, run_id: str, state: str | None = None) -> bool:
    """For ``eventually``: is an event of ``run_id`` of job ``key`` on record (in ``state``)?"""
    return any(e["run_id"] == run_id and state in (None, e["state"]) for e in await events_of(nc, key))
