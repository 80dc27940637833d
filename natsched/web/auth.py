"""Who may look and act: logins, signed session cookies and CSRF tokens.

On localhost (the default) nobody logs in. Off localhost ``natsched web`` refuses to start
without a login (``--token-file`` / ``NATSCHED_WEB_TOKEN``, or ``--users FILE``) and
without TLS (``--tls-cert``/``--tls-key``) or ``--behind-proxy`` (a TLS reverse proxy in
front); with a login configured every request but the login page needs a session.

A session is a cookie ``<user>|<expiry>|<nonce>|<hmac>`` signed with a key made at start
(sessions end when the web process restarts: nothing to store). The CSRF token is an HMAC
of the session cookie; an action must carry it in ``X-CSRF-Token`` and come from our own
origin, and the cookie is ``SameSite=Strict``.

Users file: one ``name:scrypt$<salt>$<hash>`` per line (``natsched web password NAME``
prints one); ``#`` starts a comment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from natsched.errors import ConfigError

SESSION_COOKIE = "natsched_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = 12 * 3600.0
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, salt, _ = stored.split("$")
        if kind != "scrypt":
            return False
        return hmac.compare_digest(hash_password(password, base64.b64decode(salt)), stored)
    except ValueError:
        return False


def read_users(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read users file {path}: {exc.strerror}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, stored = line.partition(":")
        if not sep or not name or not stored.startswith("scrypt$"):
            raise ConfigError(
                f"{path}:{number}: expected name:scrypt$... (make one with 'natsched web password NAME')"
            )
        users[name] = stored
    if not users:
        raise ConfigError(f"users file {path} names no user")
    return users


@dataclass(kw_only=True)
class Auth:
    """The login configuration of one web process, and its session key."""

    token: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    secure_cookies: bool = False  # served over TLS (directly or by the proxy in front)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def required(self) -> bool:
        return bool(self.token or self.users)

    def check_login(self, user: str, password: str) -> str | None:
        """The session's user name if the login is right, else None. With a token, the token is
        the password and the user name is free (shown in the page)."""
        if self.token and hmac.compare_digest(password.encode(), self.token.encode()):
            return user or "token"
        stored = self.users.get(user)
        if stored is not None and check_password(password, stored):
            return user
        return None

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def new_session(self, user: str) -> str:
        body = f"{user}|{int(time.time() + SESSION_TTL)}|{secrets.token_hex(8)}"
        return f"{body}|{self._sign(body)}"

    def session_user(self, cookie: str | None) -> str | None:
        """The user of a valid, unexpired session cookie; None otherwise."""
        if not cookie:
            return None
        body, _, signature = cookie.rpartition("|")
        if not hmac.compare_digest(self._sign(body), signature):
            return None
        parts = body.split("|")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) < time.time():
            return None
        return parts[0]

    def csrf_token(self, cookie: str) -> str:
        return self._sign(f"csrf|{cookie}")

    def check_csrf(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token) and hmac.compare_digest(self.csrf_token(str(cookie)), str(token))


def check_exposure(host: str, auth: Auth, *, tls: bool, behind_proxy: bool) -> None:
    """Refuse to serve off localhost without a login and without TLS (or a TLS proxy in front)."""
    if behind_proxy and not auth.required:
        # The proxy connects from localhost: without a login, everyone it lets in is "local".
        raise ConfigError("--behind-proxy needs a login (--token-file, NATSCHED_WEB_TOKEN or --users)")
    if is_loopback(host):
        return
    if not auth.required:
        raise ConfigError(
            f"--listen {host} is off localhost: give a login (--token-file, NATSCHED_WEB_TOKEN or --users)"
        )
    if not (tls or behind_proxy):
        raise ConfigError(
            f"--listen {host} is off localhost: give --tls-cert/--tls-key, or --behind-proxy "
            "when a TLS reverse proxy is in front"
        )
