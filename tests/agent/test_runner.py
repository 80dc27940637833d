"""The process runner with real processes: argv, shell, env, cwd, output, tree kill, shutdown, users."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from agent.environment import build_env
from agent.runner import CHUNK, ProcessResult, ProcessRunner, ProcessSpec
from natsched.errors import RunError

PATH = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


async def run(spec: ProcessSpec, runner: ProcessRunner | None = None) -> ProcessResult:
    async with asyncio.timeout(20):
        return await (await (runner or ProcessRunner()).start(spec)).wait()


async def read_pids(*files: Path) -> list[int]:
    """The pids a test script wrote, once it has written them all."""
    async with asyncio.timeout(10):
        while not all(f.exists() and f.read_text().strip() for f in files):  # noqa: ASYNC110 - polling files
            await asyncio.sleep(0.01)
    return [int(f.read_text()) for f in files]


def assert_all_gone(pids: list[int]) -> None:
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    assert not alive, f"still running: {alive}"


async def test_exit_codes_and_signals() -> None:
    ok = await run(ProcessSpec(argv=("true",), env=PATH))
    assert (ok.exit_code, ok.signal, ok.error, ok.timed_out, ok.killed) == (0, None, None, False, False)
    assert ok.pid and ok.started_at <= ok.ended_at and ok.duration >= 0
    assert (await run(ProcessSpec(argv=("sh", "-c", "exit 7"), env=PATH))).exit_code == 7
    killed = await run(ProcessSpec(argv=("sh", "-c", "kill -9 $$"), env=PATH))
    assert (killed.exit_code, killed.signal) == (None, signal.SIGKILL)


async def test_argv_is_passed_literally() -> None:
    args = ("a b", "$HOME", "'q'", '"dq"', "*", "; rm -rf /", "")
    result = await run(ProcessSpec(argv=("printf", "%s|", *args), env=PATH))
    assert result.exit_code == 0
    assert result.output_tail == "".join(f"{a}|" for a in args).encode()


async def test_shell_runs_a_pipeline_with_arguments() -> None:
    result = await run(
        ProcessSpec(
            argv=("printf 'b\\na\\n' | sort | tr a-z A-Z; echo \"$1/$2\"", "x y", "z"), shell=True, env=PATH
        )
    )
    assert result.exit_code == 0 and result.output_tail == b"A\nB\nx y/z\n"


async def test_expanded_environment_and_cwd_reach_the_process(tmp_path: Path) -> None:
    env, unknown = build_env({"A": "1", "B": "${A}-${MISSING}-$$-$(id)"}, PATH, {"NATSCHED_RUN_ID": "r1"})
    assert unknown == ["MISSING"]
    result = await run(
        ProcessSpec(argv=('echo "$B $NATSCHED_RUN_ID"; pwd',), shell=True, env=env, cwd=str(tmp_path))
    )
    assert result.output_tail == f"1--$-$(id) r1\n{tmp_path}\n".encode()


async def test_env_is_exactly_what_the_spec_says() -> None:
    result = await run(ProcessSpec(argv=("/usr/bin/env",), env={"ONLY": "this"}))
    assert result.output_tail == b"ONLY=this\n"


async def test_a_job_starts_as_popen_would_start_it(tmp_path: Path) -> None:
    """What the posix_spawn start (agent/spawn.py) does by hand that Popen did for us: the
    program is found on the job's PATH (not the agent's), SIGPIPE is back to its default (a
    job's `yes | head` ends), no descriptor of the agent leaks, the job leads its session."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "only-on-job-path").write_text("#!/bin/sh\necho found\n")
    (bindir / "only-on-job-path").chmod(0o755)
    found = await run(ProcessSpec(argv=("only-on-job-path",), env={"PATH": f"{bindir}:{PATH['PATH']}"}))
    assert found.output_tail == b"found\n"
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # as one handed down to the agent (before its runner exists)
    try:
        script = (
            f"grep SigIgn /proc/self/status; test -e /proc/$$/fd/{write_end} && echo leaked || echo clean; "
            "echo $(ps -o sid= -p $$) $$"
        )
        result = await run(ProcessSpec(argv=(script,), shell=True, env=PATH))
    finally:
        os.close(read_end)
        os.close(write_end)
    sigign, leak, session = result.output_tail.decode().splitlines()
    assert not int(sigign.split()[1], 16) & (1 << (signal.SIGPIPE - 1)), sigign
    assert leak == "clean", f"the agent's descriptor {write_end} reached the job"
    sid, pid = session.split()
    assert sid == pid, "the job leads its own session (its tree is killed as a group)"


async def test_a_job_with_a_working_directory_starts_the_same_way(tmp_path: Path) -> None:
    """A job with ``cwd`` (or ``user``) starts with Popen, not posix_spawn (agent/spawn.py
    spawn_as): the same session, signals, descriptors and stdin as every other job, in its
    directory, with no use of the event loop's subprocess support (uvloop's refuses ``user``)."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # as one handed down to the agent (before its runner exists)
    try:
        script = (
            f"grep SigIgn /proc/self/status; test -e /proc/$$/fd/{write_end} && echo leaked || echo clean; "
            "echo $(ps -o sid= -p $$) $$; pwd; cat; echo err >&2"
        )
        result = await run(ProcessSpec(argv=(script,), shell=True, env=PATH, cwd=str(tmp_path)))
    finally:
        os.close(read_end)
        os.close(write_end)
    sigign, leak, session, cwd, err = result.output_tail.decode().splitlines()
    assert not int(sigign.split()[1], 16) & (1 << (signal.SIGPIPE - 1)), sigign
    assert leak == "clean", f"the agent's descriptor {write_end} reached the job"
    sid, pid = session.split()
    assert sid == pid, "the job leads its own session (its tree is killed as a group)"
    assert (cwd, err) == (str(tmp_path), "err")


async def test_exit_codes_of_jobs_started_by_popen_are_ours(tmp_path: Path) -> None:
    """A Popen started elsewhere in the agent first polls the Popens it finds unreaped: the ones
    spawn_as started must not be among them, or their exit codes would be taken from us."""
    runner = ProcessRunner()
    async with asyncio.timeout(20):
        started = [
            await runner.start(ProcessSpec(argv=(f"exit {code}",), shell=True, env=PATH, cwd=str(tmp_path)))
            for code in range(1, 6)
        ]
        # The loop held: they exit meanwhile, and nothing of ours can reap them before Popen does.
        time.sleep(0.3)  # noqa: ASYNC251 - holding the loop is the point
        subprocess.run(["true"], check=True)  # noqa: ASYNC221 - Popen's cleanup of unreaped Popens, now
        results = [await process.wait() for process in started]
    assert [r.exit_code for r in results] == [1, 2, 3, 4, 5]


async def test_stdin_is_empty_and_stderr_is_captured() -> None:
    result = await run(ProcessSpec(argv=("cat; echo out; echo err >&2",), shell=True, env=PATH))
    assert result.exit_code == 0 and result.output_tail == b"out\nerr\n"


async def test_output_is_streamed_in_chunks_and_the_tail_stays_bounded() -> None:
    expected = b"".join(b"%d\n" % i for i in range(1, 800_001))  # about 6 MB
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)
        await asyncio.sleep(0)  # a consumer that yields, like a real publisher

    runner = ProcessRunner()
    async with asyncio.timeout(30):
        process = await runner.start(ProcessSpec(argv=("seq", "800000"), env=PATH, tail_bytes=100), collect)
        result = await process.wait()
    assert result.exit_code == 0
    assert result.output_bytes == len(expected)
    assert result.output_tail == expected[-100:]
    assert b"".join(chunks) == expected
    assert len(chunks) > 10 and max(map(len, chunks)) <= CHUNK


async def test_a_slow_consumer_loses_chunks_not_the_tail_and_a_broken_one_changes_nothing() -> None:
    received: list[bytes] = []

    async def slow(chunk: bytes) -> None:
        received.append(chunk)
        await asyncio.sleep(0.05)

    spec = ProcessSpec(argv=("head", "-c", "8000000", "/dev/zero"), env=PATH, tail_bytes=10)
    async with asyncio.timeout(20):
        result = await (await ProcessRunner(drain_timeout=10).start(spec, slow)).wait()
    assert result.output_bytes == 8_000_000 and result.output_tail == bytes(10)
    streamed = b"".join(received)
    assert len(streamed) < 8_000_000 and b"bytes of output not streamed" in streamed

    async def broken(chunk: bytes) -> None:
        raise RuntimeError("publisher down")

    async with asyncio.timeout(20):
        result = await (
            await ProcessRunner().start(ProcessSpec(argv=("seq", "100000"), env=PATH), broken)
        ).wait()
    assert result.exit_code == 0 and result.output_tail.endswith(b"99999\n100000\n")


async def test_timeout_kills_the_whole_tree_even_setsid_and_sigterm_ignoring_members(tmp_path: Path) -> None:
    child, grandchild = tmp_path / "child", tmp_path / "grandchild"
    # root sh -> child (setsid: a new session, out of our process group; ignores SIGTERM)
    #         -> grandchild sleep (inherits the ignored SIGTERM, holds the output pipe)
    script = (
        f"setsid sh -c 'trap \"\" TERM; sleep 60 & echo $! > {grandchild}; sleep 61' & "
        f"echo $! > {child}; sleep 62"
    )
    runner = ProcessRunner()
    process = await runner.start(
        ProcessSpec(argv=(script,), shell=True, env=PATH, timeout=2.0, kill_grace=0.3)
    )
    pids = [process.pid, *await read_pids(child, grandchild)]
    tree = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert set(pids[1:]) <= set(tree)
    assert os.getsid(pids[1]) == pids[1] != os.getsid(process.pid)  # the child left our session

    async with asyncio.timeout(10):
        result = await process.wait()
    assert result.timed_out and not result.killed
    assert result.exit_code is None and result.signal == signal.SIGTERM
    assert 2.0 <= result.duration < 6
    assert_all_gone(pids + tree)
    assert runner.running == 0


async def test_kill_cancels_a_running_process() -> None:
    runner = ProcessRunner()
    process = await runner.start(ProcessSpec(argv=("sleep", "30"), env=PATH))
    assert runner.running == 1
    await process.kill(grace=0.5)
    async with asyncio.timeout(10):
        result = await process.wait()
    assert result.killed and not result.timed_out and result.signal == signal.SIGTERM
    assert runner.running == 0
    assert_all_gone([process.pid])
    await process.kill()  # after the end: nothing to do
    assert await process.wait() == result


async def test_wait_is_bounded_when_a_leftover_keeps_the_output_open(tmp_path: Path) -> None:
    leftover = tmp_path / "leftover"
    runner = ProcessRunner(drain_timeout=0.3)
    process = await runner.start(
        ProcessSpec(argv=(f"sleep 30 & echo $! > {leftover}; echo done",), shell=True, env=PATH)
    )
    try:
        async with asyncio.timeout(5):
            result = await process.wait()
        assert result.exit_code == 0 and not result.killed and result.output_tail == b"done\n"
    finally:
        for pid in await read_pids(leftover):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_shutdown_lets_short_runs_finish_kills_long_ones_and_refuses_new_ones() -> None:
    runner = ProcessRunner()
    short = await runner.start(ProcessSpec(argv=("sleep", "0.3"), env=PATH))
    long = await runner.start(ProcessSpec(argv=("sleep", "30"), env=PATH, kill_grace=0.2))
    async with asyncio.timeout(10):
        await runner.shutdown(grace=1.5)
    assert runner.running == 0
    short_result, long_result = await short.wait(), await long.wait()
    assert short_result.exit_code == 0 and not short_result.killed
    assert long_result.killed and long_result.exit_code is None
    with pytest.raises(RunError, match="shutting down"):
        await runner.start(ProcessSpec(argv=("true",), env=PATH))


async def test_start_failures_are_one_clear_line(tmp_path: Path) -> None:
    runner = ProcessRunner()
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")  # not executable
    cases = [
        (ProcessSpec(argv=("no-such-program", "x")), "command not found: 'no-such-program'"),
        (ProcessSpec(argv=("true",), cwd=str(tmp_path / "missing")), "working directory not found: '"),
        (
            ProcessSpec(argv=("true",), cwd=str(script)),
            "cannot enter working directory '.*': Not a directory",
        ),
        (ProcessSpec(argv=(str(script),)), "cannot start '.*script.sh': Permission denied"),
        (ProcessSpec(argv=("true",), env={"A": "nul\0byte"}), "cannot start 'true': .*null byte"),
        (
            ProcessSpec(argv=("true",), user="no-such-user-xyz"),
            "job asks to run as unknown user 'no-such-user-xyz'",
        ),
    ]
    for spec, message in cases:
        with pytest.raises(RunError, match=message) as caught:
            await runner.start(spec)
        assert "\n" not in str(caught.value) and caught.value.__cause__ is None
    assert runner.running == 0


def test_specs_are_validated() -> None:
    for bad in (
        {"argv": ()},
        {"argv": ("",)},
        {"argv": ("x",), "timeout": 0},
        {"argv": ("x",), "kill_grace": -1},
    ):
        with pytest.raises(ValueError):
            ProcessSpec(**bad)


async def test_another_user_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _has_user("nobody"):
        pytest.skip("no user 'nobody' here")
    monkeypatch.setattr(os, "geteuid", lambda: pwd.getpwnam("nobody").pw_uid + 1)  # anyone but root or nobody
    with pytest.raises(RunError, match="job asks to run as 'nobody' but the agent does not run as root"):
        await ProcessRunner().start(ProcessSpec(argv=("id", "-un"), env=PATH, user="nobody"))


async def test_run_as_another_user_when_root() -> None:
    if not _has_user("nobody"):
        pytest.skip("no user 'nobody' here")
    if os.geteuid() != 0:
        pytest.skip("the agent side of this test needs root")
    me = pwd.getpwuid(os.geteuid()).pw_name
    env, _ = build_env({}, {**PATH, "HOME": pwd.getpwuid(0).pw_dir, "USER": me})
    script = 'id -un; id -u; echo "$HOME $USER"'
    result = await run(ProcessSpec(argv=(script,), shell=True, env=env, user="nobody", cwd="/"))
    nobody = pwd.getpwnam("nobody")
    assert result.exit_code == 0
    assert result.output_tail == f"nobody\n{nobody.pw_uid}\n{nobody.pw_dir} nobody\n".encode()
    # The agent's own user needs no switch.
    assert (await run(ProcessSpec(argv=("id", "-un"), env=PATH, user=me))).output_tail == f"{me}\n".encode()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
