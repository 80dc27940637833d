"""Ways a secret used to leak: argv (``ps``), output written in pieces, quoted reasons."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from natsched.master.service import MasterService
from natsched.secrets import Masker, StreamMasker, generate_key_file, load_key
from natsched.settings import ConnectionSettings
from natsched.subjects import API_SECRETS_SET
from natsched.vocab import RunState
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs
from tests.security.test_secrets import finals, log_text

VALUE = "hunter2-s3cr3t"
QUOTED = "q'uo\\te\"d-SEC"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.key"
    generate_key_file(path)
    return path


async def test_a_secret_in_a_command_is_refused_at_apply(master: MasterService, nc: Client) -> None:
    for command in (["mysql", "-p${secret:db_pass}"], "mysql -p${secret:db_pass}"):
        shell = isinstance(command, str)
        reply = await apply(nc, toml_jobs(job("argv", command=command, shell=shell), group="leak"))
        assert reply["ok"] is False, reply
        [error] = reply["errors"]
        assert "field 'command'" in error and "${secret:db_pass}" in error and "ps" in error
        assert "\n" not in error
    listed = await api(nc, "natsched.api.jobs.list", {"group": "leak"})
    assert listed["jobs"] == [], "nothing was written"


async def test_a_secret_never_shows_in_ps_and_is_masked_when_written_in_pieces(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, key_file: Path, tmp_path: Path
) -> None:
    # Half the value, half a second, the other half: two writes, two output chunks.
    pieces = 'printf %s "$P" | cut -c1-7 | tr -d "\\n"; sleep 0.5; printf %s "$P" | cut -c8-; sleep 1'
    async with MasterService(conn, secret_key=load_key(key_file)):
        await start_agent("s1", secret_key_file=key_file)
        assert (await api(nc, API_SECRETS_SET, {"name": "db_pass", "value": VALUE}))["ok"]
        spec = job(
            "pieces",
            mode="slave",
            targets={"agents": ["s1"]},
            command=["sh", "-c", pieces],
            env={"P": "${secret:db_pass}"},
        )
        assert (await apply(nc, toml_jobs(spec, group="leak")))["ok"]
        reply = json.loads((await nc.request("natsched.trigger.leak.pieces", b"{}", timeout=10)).data)
        run_id = reply["runs"][0]["run_id"]
        while not await finals(nc, "leak.pieces"):
            cmdlines = []
            for process in psutil.process_iter(["cmdline"]):
                cmdlines.append(" ".join(process.info["cmdline"] or []))
            assert not [line for line in cmdlines if VALUE in line], "the value is in some process's argv"
            await asyncio.sleep(0.1)
        [event] = await finals(nc, "leak.pieces")
        assert event["state"] == "succeeded" and event["output_tail"] == "***\n"
        assert await log_text(nc, run_id, "s1") == "***\n"


@pytest.mark.parametrize("cut", range(1, len(VALUE)))
def test_a_value_split_anywhere_across_writes_is_masked(cut: int) -> None:
    stream = StreamMasker(Masker([VALUE, "other"]))
    out = stream.feed(b"before " + VALUE[:cut].encode())
    out += stream.feed(VALUE[cut:].encode() + b" after hunt")  # "hunt" could begin the value: held
    assert out == b"before *** after "
    assert out + stream.flush() == b"before *** after hunt"


def test_a_value_split_over_three_writes_and_near_misses_pass_through() -> None:
    stream = StreamMasker(Masker([VALUE]))
    parts = [b"xhunter", b"2-s3c", b"r3t y hunter2-s3cX z"]
    assert b"".join(stream.feed(p) for p in parts) + stream.flush() == b"x*** y hunter2-s3cX z"


@pytest.mark.parametrize(
    "reason",
    [
        f"command not found: {QUOTED!r}",
        f"cannot start {QUOTED!r}: Permission denied",
        f"bad value {json.dumps(QUOTED)}",
        f"bad value {json.dumps({'v': QUOTED})}",
    ],
)
def test_reasons_mask_quoted_and_escaped_forms(reason: str) -> None:
    masked = Masker([QUOTED]).text(reason)
    assert "SEC" not in masked and "***" in masked, masked


def test_an_output_tail_cut_inside_a_value_masks_its_end() -> None:
    assert Masker([VALUE]).cut_tail("s3cr3t and more") == "*** and more"
    assert Masker([VALUE]).cut_tail("t is fine") == "*** is fine"  # one byte may be the value's end


# Each way a run can go wrong while it holds a secret: the value is in its environment, and the
# job writes it to stdout/stderr or names the variable in argv.
FAILING = {
    "exits": ["sh", "-c", 'echo "pw=$P" >&2; exit 3'],
    "times_out": ["sh", "-c", 'echo "$P"; exec sleep 30'],
    "not_found": ["/nonexistent/bin", "${P}"],
    "succeeds": ["sh", "-c", 'echo "$P"; echo "u=$P;" >&2'],
}


async def test_a_secret_is_in_no_log_event_reply_or_cli_output_when_runs_fail(
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
    key_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, debug included
    async with MasterService(conn, secret_key=load_key(key_file)):
        await start_agent("s1", secret_key_file=key_file)
        assert (await api(nc, API_SECRETS_SET, {"name": "db_pass", "value": VALUE}))["ok"]
        # Malformed requests carrying the value: the error says what is wrong, not what was sent.
        replies = [
            await api(nc, API_SECRETS_SET, {"name": "x", "value": [VALUE]}),
            await api(nc, API_SECRETS_SET, {"name": "bad name", "value": VALUE}),
            await api(nc, API_SECRETS_SET, {"name": "y", "value": VALUE, "extra": 1}),
        ]
        assert not any(r["ok"] for r in replies) and VALUE not in json.dumps(replies), replies
        jobs = [
            job(
                name,
                mode="slave",
                targets={"agents": ["s1"]},
                command=command,
                env={"P": "${secret:db_pass}"},
            )
            for name, command in FAILING.items()
        ]
        jobs[1]["timeout"] = "1s"
        assert (await apply(nc, toml_jobs(*jobs, group="leak")))["ok"]
        triggered = [
            (await nc.request(f"natsched.trigger.leak.{name}", b"{}", timeout=10)).data.decode()
            for name in FAILING
        ]
        await eventually(lambda: _all_ended(nc), 15, "every run ended")
        run_ids = [json.loads(reply)["runs"][0]["run_id"] for reply in triggered]
        states = {e["job"]: e["state"] for e in await stream_events(nc) if not RunState(e["state"]).open}
        assert states == {
            "leak.exits": "failed",
            "leak.times_out": "timed_out",
            "leak.not_found": "failed",
            "leak.succeeds": "succeeded",
        }, states
        logs = [await log_text(nc, run_id, "s1") for run_id in run_ids]
        assert "***" in logs[0], "the failing run's output is masked, not dropped"
        # The CLI shows the failed run, its output and the list (the other runs: events and logs).
        cli = [await _cli(conn, "runs", "show", run_ids[0]), await _cli(conn, "logs", run_ids[0])]
        cli.append(await _cli(conn, "runs"))
        assert "***" in cli[0], cli[0]
        everything = [*triggered, json.dumps(await stream_events(nc)), *logs, *cli, caplog.text]
        assert not [text for text in everything if VALUE in text], "the secret's value leaked"


async def _all_ended(nc: Client) -> bool:
    ended = {e["job"] for e in await stream_events(nc) if not RunState(e["state"]).open}
    return ended >= {f"leak.{name}" for name in FAILING}


async def _cli(conn: ConnectionSettings, *argv: str) -> str:
    command = [str(Path(sys.executable).parent / "natsched"), *argv, "--server", conn.url]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr
