"""A distinct strong password per NATS user, each in its own file for the service that uses it.

``natsched permissions`` used to write one ``CHANGE-ME`` for every user: whoever forgot to
change it (or changed them all to one value) gave every role the master's password. Now
each user gets 256 random bits, written to ``<dir>/<user>.env`` (``NATS_USER`` and
``NATS_PASSWORD``, mode 0600, the directory 0700) for a systemd ``EnvironmentFile=``.
A file that exists is kept and its password reused, so running the command again (say,
for a new agent) adds users without locking the running services out.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from natsched.errors import ConfigError

PASSWORD_BYTES = 32  # 256 bits; token_urlsafe makes 43 characters of [A-Za-z0-9_-]


def generate() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def credential_file(directory: Path, user: str) -> Path:
    return directory / f"{user}.env"


def _read(path: Path, user: str) -> str:
    values = dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    if values.get("NATS_USER") != user or not values.get("NATS_PASSWORD"):
        raise ConfigError(f"{path} is not {user}'s credentials (NATS_USER/NATS_PASSWORD); remove it")
    return values["NATS_PASSWORD"]


def ensure_credentials(directory: Path, users: list[str]) -> tuple[dict[str, str], list[Path]]:
    """Every user's password (read from its file, or generated and written); and the new files."""
    found: dict[str, str] = {}
    created: list[Path] = []
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for user in sorted(users):
            path = credential_file(directory, user)
            if path.exists():
                found[user] = _read(path, user)
                continue
            found[user] = generate()
            # O_EXCL and the mode at creation: the password is never readable by others, not even briefly.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f"NATS_USER={user}\nNATS_PASSWORD={found[user]}\n")
            created.append(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot keep credentials in {directory}: {exc}") from None
    return found, created
