"""The job guardian: the process groups an agent registered die when the agent is killed -9.

The agent side runs in a child process (the test kills it -9, as a crash would); its jobs are
`sleep` processes in their own sessions, as the runner starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys

import psutil
import pytest

AGENT_SIDE = """
import asyncio, json, os, signal, subprocess, sys, time
import agent.guardian as guardian_module
guardian_module.FIRST_SLOTS = 2  # the registry grows twice below
def job():
    return subprocess.Popen(["sleep", "60"], start_new_session=True).pid
def register(guardian):
    watched = [job() for _ in range(5)]
    for pgid in watched:
        guardian.watch(pgid)
    guardian.forget(watched[1])
    return watched
def report(guardian, watched, first):
    print(json.dumps({"kept": watched[1], "killed": [p for p in watched if p != watched[1]],
                      "guardians": [first, guardian.pid]}), flush=True)
    time.sleep(60)
async def in_loop():  # the agent's case: the loop sees the guardian exit, no registration needed
    guardian = guardian_module.Guardian()
    guardian.start()
    watched, first = register(guardian), guardian.pid
    os.kill(first, signal.SIGKILL)
    async with asyncio.timeout(5):
        while guardian.pid == first:
            await asyncio.sleep(0.01)
    report(guardian, watched, first)
if sys.argv[1] == "kill-guardian-in-loop":
    asyncio.run(in_loop())
else:  # no event loop: a dead guardian is noticed at the next registration
    guardian = guardian_module.Guardian()
    guardian.start()
    watched, first = register(guardian), guardian.pid
    if sys.argv[1] == "kill-guardian":
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)  # gone for sure before the next registration
        watched.append(job())
        guardian.watch(watched[-1])
    report(guardian, watched, first)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_and_crash(mode: str) -> dict[str, list[int] | int]:
    with subprocess.Popen([sys.executable, "-c", AGENT_SIDE, mode], stdout=subprocess.PIPE) as agent:
        assert agent.stdout is not None
        try:
            ready, _, _ = select.select([agent.stdout], [], [], 10)
            assert ready, "the agent side said nothing within 10 s"
            line = agent.stdout.readline()
        finally:
            agent.kill()
            agent.wait(5)
    said: dict[str, list[int] | int] = json.loads(line)
    return said


async def crash_agent_side(mode: str) -> dict[str, list[int] | int]:
    """Run the agent side, read what it registered, kill it -9; return what it said."""
    return await asyncio.to_thread(run_and_crash, mode)


async def gone(pids: list[int]) -> None:
    async with asyncio.timeout(5):
        while any(alive(pid) for pid in pids):  # noqa: ASYNC110 - polling other processes
            await asyncio.sleep(0.02)


def cleanup(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


async def test_the_groups_registered_die_with_the_agent_killed_9_and_a_forgotten_one_lives() -> None:
    said = await crash_agent_side("plain")
    kept = said["kept"]
    assert isinstance(kept, int) and isinstance(said["killed"], list)
    try:
        await gone(said["killed"])  # 4 groups, registered across two growths of the registry
        assert alive(kept), "a group whose run ended (forgotten) is left alone"
    finally:
        cleanup(kept)


@pytest.mark.parametrize("mode", ["kill-guardian", "kill-guardian-in-loop"])
async def test_a_guardian_killed_is_replaced_and_the_new_one_knows_every_group(mode: str) -> None:
    said = await crash_agent_side(mode)
    kept, killed, guardians = said["kept"], said["killed"], said["guardians"]
    assert isinstance(kept, int) and isinstance(killed, list) and isinstance(guardians, list)
    try:
        assert guardians[0] != guardians[1], "a new guardian was started"
        await gone(killed)  # those registered before the first guardian died, and after
        await gone([guardians[1]])  # it exits once it has done its job
        assert alive(kept)
    finally:
        cleanup(kept)
