"""``natsched permissions`` gives every user its own strong password (issue 15, item 10).

It used to print one ``CHANGE-ME`` for all five users, so a forgotten edit gave every role
the master's password. Checked with a real nats-server running the printed block.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nats

from natsched.embedded import EmbeddedServer, free_port

BIN = Path(sys.executable).parent
USERS = {"natsched-master", "natsched-admin", "natsched-web", "agent-a1", "agent-a2", "natsched-trigger"}


def permissions(tmp_path: Path, *agents: str) -> tuple[str, str]:
    args = [a for name in agents for a in ("--agent", name)]
    done = subprocess.run(
        [str(BIN / "natsched"), "permissions", *args, "--trigger-job", "sec.echo"]
        + ["--credentials-dir", str(tmp_path / "creds")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


CONNECT = """
import asyncio, sys, nats
async def main():
    try:
        nc = await nats.connect(sys.argv[1], user=sys.argv[2], password=sys.argv[3],
                                allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    except Exception as exc:
        print("refused", exc)
        return
    print("accepted")
    await nc.close()
asyncio.run(main())
"""


def try_connect(url: str, user: str, password: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CONNECT, url, user, password], capture_output=True, text=True, timeout=30
    )
    return done.stdout + done.stderr


def block_passwords(block: str) -> dict[str, str]:
    users = json.loads(block[block.index("users = ") + len("users = ") : block.rindex("}")])
    return {entry["user"]: entry["password"] for entry in users}


def file_password(tmp_path: Path, user: str) -> str:
    path = tmp_path / "creds" / f"{user}.env"
    assert path.stat().st_mode & 0o777 == 0o600, path
    lines = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert lines["NATS_USER"] == user
    return lines["NATS_PASSWORD"]


async def test_each_user_gets_its_own_strong_password_that_the_server_accepts(tmp_path: Path) -> None:
    block, note = permissions(tmp_path, "a1", "a2:p")
    assert "CHANGE-ME" not in block
    passwords = block_passwords(block)
    assert set(passwords) == USERS
    assert len(set(passwords.values())) == len(USERS), "every user has a different password"
    assert all(len(p) >= 40 for p in passwords.values()), "256 random bits each"
    assert (tmp_path / "creds").stat().st_mode & 0o777 == 0o700
    assert all(file_password(tmp_path, user) == passwords[user] for user in USERS)
    assert str(tmp_path / "creds") in note and "0600" in note, note

    server = EmbeddedServer(
        data_dir=tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats.log", extra_config=block
    )
    server.start()
    try:
        for user in sorted(USERS):
            nc = await nats.connect(
                server.url, user=user, password=file_password(tmp_path, user), allow_reconnect=False
            )
            await nc.close()
        # a1's password does not open the master's account (in a subprocess: nats-py leaves the
        # refused connection's socket open, which this suite's warnings-as-errors would flag)
        assert try_connect(server.url, "agent-a1", passwords["agent-a1"]).startswith("accepted")
        assert try_connect(server.url, "natsched-master", passwords["agent-a1"]).startswith("refused")
    finally:
        server.stop()

    again, note = permissions(tmp_path, "a1", "a2:p", "a3")  # a new agent later: nobody locked out
    renewed = block_passwords(again)
    assert {u: renewed[u] for u in USERS} == passwords
    assert renewed["agent-a3"] not in passwords.values() and "agent-a3.env" in note
