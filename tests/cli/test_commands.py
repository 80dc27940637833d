"""The natsched CLI through typer's CliRunner, against a real server and master process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from natsched.cli.app import app
from natsched.embedded import EmbeddedServer, free_port
from tests.conftest import BIN, Process
from tests.helpers import job, toml_jobs

runner = CliRunner()


def natsched(*args: str, url: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--server", url, *args])
    return result.exit_code, result.output


def test_apply_list_show_disable_delete(
    nats_server: EmbeddedServer, master_process: Process, tmp_path: Path
) -> None:
    url = nats_server.url
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(
        toml_jobs(
            job("backup", targets={"tags": ["db"]}, triggers=[{"cron": "0 2 * * *"}]),
            job("report"),
            group="ops",
        )
    )

    code, out = natsched("apply", "-f", str(jobs_file), "--dry-run", url=url)
    assert code == 0 and "dry run, nothing written" in out and "2 created" in out
    code, out = natsched("jobs", "list", url=url)
    assert code == 0 and "0 job(s)" in out

    code, out = natsched("apply", "-f", str(jobs_file), url=url)
    assert code == 0 and "+ ops.backup" in out and "2 created" in out
    code, out = natsched("apply", "-f", str(jobs_file), url=url)
    assert code == 0 and "2 unchanged" in out

    code, out = natsched("jobs", "list", "--group", "ops", "--json", url=url)
    assert code == 0 and [j["key"] for j in json.loads(out)] == ["ops.backup", "ops.report"]
    code, out = natsched("jobs", "list", "--agent", "web1", url=url)
    assert code == 0 and "ops.report" in out and "ops.backup" not in out

    code, out = natsched("jobs", "show", "backup", url=url)
    assert code == 0 and '"cron": "0 2 * * *"' in out

    code, out = natsched("jobs", "disable", "ops.report", url=url)
    assert code == 0 and "ops.report: disabled" in out
    code, out = natsched("jobs", "delete", "ops.report", url=url)
    assert code == 0 and "ops.report" in out

    jobs_file.write_text(
        toml_jobs(job("backup", targets={"tags": ["db"]}, triggers=[{"cron": "0 2 * * *"}]), group="ops")
    )
    code, out = natsched("jobs", "list", url=url)
    assert "1 job(s)" in out


def test_invalid_file_is_refused_with_every_error_named(
    nats_server: EmbeddedServer, master_process: Process, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "bad.toml"
    jobs_file.write_text(
        toml_jobs(
            job("ok"), job("bad", triggers=[{"cron": "* * *"}]), job("worse", timeout="soon"), group="ops"
        )
    )
    code, out = natsched("apply", "-f", str(jobs_file), url=nats_server.url)
    assert code == 1
    assert "2 invalid job definition(s)" in out
    assert "bad.toml: job 'bad': field 'triggers.cron'" in out
    assert "job 'worse': field 'timeout'" in out
    assert "Traceback" not in out
    code, out = natsched("jobs", "list", url=nats_server.url)
    assert "0 job(s)" in out


def test_clear_errors_without_master_or_server(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(toml_jobs(job("a"), group="g"))
    code, out = natsched("apply", "-f", str(jobs_file), url=nats_server.url)
    assert code == 1 and "no master answers" in out and "Traceback" not in out

    code, out = natsched("jobs", "list", url=f"nats://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach NATS" in out and "Traceback" not in out

    code, out = natsched("apply", "-f", str(tmp_path / "missing.toml"), url=nats_server.url)
    assert code == 1 and "missing.toml: cannot read" in out


def test_agents_lists_live_agents(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    agent = spawn(
        "natsched-agent",
        "--name",
        "db1",
        "--tag",
        "db,linux",
        "--pool",
        "backup",
        "--state-dir",
        str(tmp_path / "db1"),
        url=nats_server.url,
    )
    import time

    deadline = time.monotonic() + 15
    out = ""
    while time.monotonic() < deadline:
        code, out = natsched("agents", "--json", url=nats_server.url)
        if code == 0 and json.loads(out):
            break
        time.sleep(0.2)
    agents = json.loads(out)
    assert [a["agent"] for a in agents] == ["db1"], agent.output()
    assert agents[0]["tags"] == ["db", "linux"] and agents[0]["pools"] == ["backup"]
    code, out = natsched("agents", url=nats_server.url)
    assert code == 0 and "db1" in out and "1 live agent(s)" in out
    assert agent.terminate() == 0, agent.output()


def test_unreachable_server_is_one_line_of_error() -> None:
    """No 'nats: [Errno 111] Connect call failed' lines from each attempt before the error.

    A real process: pytest's log capture would swallow the lines a user sees on stderr.
    """
    url = f"nats://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [str(BIN / "natsched"), "--server", url, "jobs", "list"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("error: cannot reach NATS"), done.stderr


def test_apply_dry_run_prints_a_per_field_diff(
    nats_server: EmbeddedServer, master_process: Process, tmp_path: Path
) -> None:
    url = nats_server.url
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(toml_jobs(job("job", timeout="1h", triggers=[{"cron": "0 2 * * *"}]), group="g"))
    assert natsched("apply", "-f", str(jobs_file), url=url)[0] == 0
    jobs_file.write_text(toml_jobs(job("job", timeout="2h", triggers=[{"cron": "0 3 * * *"}]), group="g"))
    code, out = natsched("apply", "-f", str(jobs_file), "--dry-run", url=url)
    assert code == 0
    assert '~ g.job: triggers[0].cron "0 2 * * *" -> "0 3 * * *"; timeout 1h -> 2h' in out, out
    assert "dry run, nothing written: 0 created, 1 updated" in out
