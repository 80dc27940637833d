"""``natsched runs`` / ``runs show`` / ``logs`` against runs made by a real agent process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from natsched.embedded import EmbeddedServer
from tests.cli.test_commands import natsched
from tests.conftest import Process
from tests.helpers import job, toml_jobs


def _wait_runs(
    url: str, predicate: Callable[[list[dict[str, object]]], bool], timeout: float = 20
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        code, out = natsched("runs", "--json", url=url)
        if code == 0:
            found = json.loads(out)
            if predicate(found):
                return found
        time.sleep(0.3)
    raise AssertionError(f"runs never matched; last: {found}")


def _wait_agent(url: str, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, out = natsched("agents", "--json", url=url)
        if code == 0 and name in {a["agent"] for a in json.loads(out) if "problem" not in a}:
            return
        time.sleep(0.3)
    raise AssertionError(f"agent {name} never appeared")


def test_runs_show_and_logs(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    url = nats_server.url
    agent = spawn("natsched-agent", "--name", "w1", "--state-dir", str(tmp_path / "w1"), url=url)
    jobs_file = tmp_path / "jobs.toml"
    _wait_agent(url, "w1")
    # An `at` 2 s ahead: on a loaded machine the CLI can take longer than that to apply, and
    # apply (rightly) refuses a time that has passed; then try again with a fresh time, so
    # the runs always come from an `at` trigger. run-once: an agent that takes the job in
    # only after its time (slow under load) still runs it once instead of skipping it.
    for _ in range(5):
        soon = datetime.fromtimestamp(time.time() + 2, UTC).isoformat()
        jobs_file.write_text(
            toml_jobs(
                job(
                    "hello",
                    command=["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done"],
                    triggers=[{"at": soon}],
                    misfire="run-once",
                ),
                job(
                    "broken",
                    command=["sh", "-c", "echo bad >&2; exit 3"],
                    triggers=[{"at": soon}],
                    misfire="run-once",
                ),
                group="demo",
            )
        )
        code, out = natsched("apply", "-f", str(jobs_file), url=url)
        if code == 0:
            break
        assert "is in the past, so the job would never run" in out, out
    assert code == 0, out

    runs = _wait_runs(url, lambda rs: {r["state"] for r in rs} >= {"succeeded", "failed"})
    by_job = {r["job"]: r for r in runs}
    assert by_job["demo.hello"]["states"] == ["started", "succeeded"]
    assert by_job["demo.broken"]["exit_code"] == 3 and by_job["demo.broken"]["reason"] == "exit code 3"

    code, out = natsched("runs", "--state", "failed", url=url)
    assert code == 0 and "demo.broken" in out and "demo.hello" not in out
    code, out = natsched("runs", "--job", "demo.hello", "--agent", "w1", url=url)
    assert code == 0 and "demo.hello" in out and "1 run(s)" in out

    run_id = str(by_job["demo.hello"]["run_id"])
    code, out = natsched("runs", "show", run_id, url=url)
    assert code == 0 and "started → succeeded" in out and "line 3" in out
    code, out = natsched("logs", run_id, url=url)
    assert code == 0 and out == "line 1\nline 2\nline 3\n"
    code, out = natsched("logs", run_id, "--follow", url=url)
    assert code == 0 and out.endswith("line 3\n")

    code, out = natsched("runs", "show", "zzz", url=url)
    assert code == 1 and "not a natsched run id" in out
    agent.terminate()


def test_run_wait_exit_code_and_cancel(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    url = nats_server.url
    spawn("natsched-agent", "--name", "w1", "--state-dir", str(tmp_path / "w1"), url=url)
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(
        toml_jobs(
            job(
                "exit4",
                mode="slave",
                command=["sh", "-c", 'echo "got $1 $GREETING"; exit 4', "x"],
                trigger={"env": ["GREETING"], "args": True},  # what natsched run --arg/--env may set
            ),
            job("ok", mode="slave", command=["echo", "fine"]),
            job("sleepy", mode="slave", command=["sleep", "30"]),
            group="cli",
        )
    )
    assert natsched("apply", "-f", str(jobs_file), url=url)[0] == 0
    deadline = time.monotonic() + 15
    while natsched("agents", "--json", url=url)[1].strip() in ("", "[]") and time.monotonic() < deadline:
        time.sleep(0.2)

    code, out = natsched("run", "cli.exit4", "--arg", "one", "--env", "GREETING=hi", "--follow", url=url)
    assert code == 4, out
    assert "got one hi" in out and "failed (exit 4)" in out
    code, out = natsched("run", "ok", "--wait", url=url)
    assert code == 0 and "succeeded" in out
    code, out = natsched("run", "cli.missing", url=url)
    assert code == 1 and "no job 'cli.missing'" in out

    code, out = natsched("run", "cli.sleepy", url=url)
    assert code == 0
    run_id = out.split()[0]
    time.sleep(0.5)
    code, out = natsched("cancel", run_id, url=url)
    assert code == 0 and "cancel sent" in out, out
    runs = _wait_runs(url, lambda rs: any(r["run_id"] == run_id and r["state"] == "killed" for r in rs))
    assert runs

    # One trigger id, one start: a command sent again (its answer lost) gets the first's run.
    first = natsched("run", "cli.ok", "--trigger-id", "deploy-7", url=url)
    again = natsched("run", "cli.ok", "--trigger-id", "deploy-7", url=url)
    assert first[0] == again[0] == 0 and first[1].split()[0] == again[1].split()[0], (first, again)
    code, out = natsched("run", "cli.ok", "--trigger-id", "deploy-7", "--wait", url=url)
    assert code == 0 and f"{first[1].split()[0]} on w1: succeeded" in out, out  # ended before: read back


def test_run_wait_fails_when_any_target_did_not_succeed(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    """One target succeeding must not hide another that was offline: exit 1, each outcome printed."""
    url = nats_server.url
    spawn("natsched-agent", "--name", "w1", "--state-dir", str(tmp_path / "w1"), url=url)
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(
        toml_jobs(
            job("both", mode="slave", targets={"agents": ["w1", "ghost"]}, command=["echo", "hi"]),
            job("one", mode="slave", targets={"agents": ["w1"]}, command=["echo", "hi"]),
            group="cli",
        )
    )
    assert natsched("apply", "-f", str(jobs_file), url=url)[0] == 0
    deadline = time.monotonic() + 15
    while "w1" not in natsched("agents", "--json", url=url)[1] and time.monotonic() < deadline:
        time.sleep(0.2)

    code, out = natsched("run", "cli.both", "--wait", url=url)
    assert code == 1, out
    assert "on w1: succeeded" in out and "on ghost: failed — agent offline" in out
    code, out = natsched("run", "cli.one", "--wait", "--correlation-id", "order-42", url=url)
    assert code == 0 and "on w1: succeeded" in out, out

    # runs show names what started the run: here the caller's correlation id.
    code, out = natsched("runs", "show", out.split()[0], url=url)
    assert code == 0 and "trigger: manual" in out and "correlation id: order-42" in out, out


def test_runs_show_labels_trigger_detail_in_a_fixed_order() -> None:
    from natsched.cli.runs import detail_lines

    lines = detail_lines({"zz": "1", "parents": "r1,r2", "chain_id": "r0", "file": "/in/a.csv"})
    assert lines == ["  file: /in/a.csv", "  chain: r0", "  chain parents: r1,r2", "  zz: 1"]
