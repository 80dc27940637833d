"""The process runner with real processes: argv, shell, env, cwd, kill, shutdown, users."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path

import psutil
import pytest

from agent.environment import build_env
from agent.runner import ProcessRunner, ProcessSpec
from natsched.errors import RunError


async def run(spec: ProcessSpec, runner: ProcessRunner | None = None) -> tuple[int | None, bytes]:
    runner = runner or ProcessRunner()
    async with asyncio.timeout(20):
        result = await (await runner.start(spec)).wait()
    return result.exit_code, result.output_tail


async def test_argv_is_passed_literally_and_exit_codes_are_kept() -> None:
    code, out = await run(ProcessSpec(argv=("printf", "%s|", "a b", "$HOME", "'q'")))
    assert code == 0 and out == b"a b|$HOME|'q'|"
    code, _ = await run(ProcessSpec(argv=("sh", "-c", "exit 7")))
    assert code == 7


async def test_shell_env_and_cwd(tmp_path: Path) -> None:
    env, unknown = build_env(
        {"A": "1", "B": "${A}-${MISSING}-$$"}, {"PATH": os.environ["PATH"]}, {"NATSCHED_RUN_ID": "r1"}
    )
    assert env["B"] == "1--$" and unknown == {"MISSING"}
    code, out = await run(
        ProcessSpec(
            argv=("echo $B $NATSCHED_RUN_ID; pwd | tr a-z A-Z",), shell=True, env=env, cwd=str(tmp_path)
        )
    )
    assert code == 0 and out == f"1--$ r1\n{str(tmp_path).upper()}\n".encode()


async def test_output_streamed_in_chunks_and_tail_bounded() -> None:
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    runner = ProcessRunner()
    process = await runner.start(
        ProcessSpec(argv=("head", "-c", "3000000", "/dev/zero"), tail_bytes=100), on_output=collect
    )
    result = await process.wait()
    assert result.output_bytes == 3_000_000 and len(result.output_tail) == 100
    assert sum(map(len, chunks)) == 3_000_000 and len(chunks) > 1


async def test_kill_and_timeout_take_the_whole_tree(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pids}; setsid sleep 61 & echo $! >> {pids}; sleep 62"
    runner = ProcessRunner()
    process = await runner.start(ProcessSpec(argv=(script,), shell=True, kill_grace=0.5))
    while not pids.exists() or len(pids.read_text().split()) < 2:  # noqa: ASYNC110 - waiting for the script
        await asyncio.sleep(0.02)
    await process.kill()
    result = await process.wait()
    assert result.killed and not result.timed_out and result.signal is not None
    for pid in [process.pid, *map(int, pids.read_text().split())]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    timed = await (await runner.start(ProcessSpec(argv=("sleep", "30"), timeout=0.3, kill_grace=0.2))).wait()
    assert timed.timed_out and not timed.killed and timed.duration < 5


async def test_shutdown_lets_short_runs_finish_and_kills_long_ones() -> None:
    runner = ProcessRunner()
    short = await runner.start(ProcessSpec(argv=("sleep", "0.3")))
    long = await runner.start(ProcessSpec(argv=("sleep", "30"), kill_grace=0.2))
    await runner.shutdown(grace=1.0)
    assert (await short.wait()).exit_code == 0
    assert (await long.wait()).killed
    with pytest.raises(RunError, match="shutting down"):
        await runner.start(ProcessSpec(argv=("true",)))


async def test_start_failures_are_one_clear_line(tmp_path: Path) -> None:
    runner = ProcessRunner()
    with pytest.raises(RunError, match="'no-such-program' not found"):
        await runner.start(ProcessSpec(argv=("no-such-program",)))
    with pytest.raises(RunError, match="not found"):
        await runner.start(ProcessSpec(argv=("true",), cwd=str(tmp_path / "missing")))
    with pytest.raises(RunError, match="unknown user"):
        await runner.start(ProcessSpec(argv=("true",), user="no-such-user-xyz"))


async def test_run_as_another_user() -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    if os.geteuid() != 0:
        with pytest.raises(RunError, match="does not run as root"):
            await ProcessRunner().start(ProcessSpec(argv=("id", "-un"), user="nobody"))
        return
    code, out = await run(ProcessSpec(argv=("id", "-un"), user="nobody", env={"PATH": os.environ["PATH"]}))
    assert code == 0 and out == b"nobody\n"
