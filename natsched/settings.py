"""Connection settings shared by every command and service.

Like the nats CLI, the server comes from ``--server`` or ``NATS_URL``; credentials from
flags or ``NATS_CREDS`` / ``NATS_USER`` / ``NATS_PASSWORD`` / ``NATS_TOKEN`` /
``NATS_NKEY`` and TLS material from ``NATS_CA`` / ``NATS_CERT`` / ``NATS_KEY``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from natsched.errors import ConfigError
from natsched.subjects import INBOX_PREFIX_RULE, is_inbox_prefix

DEFAULT_URL = "nats://127.0.0.1:4222"

# Environment variable -> field, the names the nats CLI uses where it has one.
ENV_VARS: Mapping[str, str] = {
    "NATS_URL": "url",
    "NATS_CREDS": "creds",
    "NATS_USER": "user",
    "NATS_PASSWORD": "password",
    "NATS_TOKEN": "token",
    "NATS_NKEY": "nkey_seed",
    "NATS_CA": "tls_ca",
    "NATS_CERT": "tls_cert",
    "NATS_KEY": "tls_key",
    "NATS_INBOX_PREFIX": "inbox_prefix",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionSettings:
    """Where NATS is and how to authenticate; secrets are never printed (see ``describe``)."""

    url: str = DEFAULT_URL
    creds: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "natsched"
    connect_timeout: float = 5.0
    # Reply-inbox prefix; None = the role's own (services) or subjects.ADMIN_INBOX (commands).
    inbox_prefix: str | None = None

    def __post_init__(self) -> None:
        for file_field in ("creds", "nkey_seed", "tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, file_field)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{file_field.replace('_', ' ')} file {value!r} does not exist")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("a TLS client certificate needs both a cert and a key")
        if self.connect_timeout <= 0:
            raise ConfigError("connect timeout must be positive")
        if self.inbox_prefix is not None and not is_inbox_prefix(self.inbox_prefix):
            raise ConfigError(f"inbox prefix {self.inbox_prefix!r}: {INBOX_PREFIX_RULE}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ConnectionSettings:
        """Settings from the environment, with explicit (non-None) overrides winning."""
        env = os.environ if env is None else env
        values: dict[str, object] = {field: env[var] for var, field in ENV_VARS.items() if env.get(var)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def with_name(self, name: str) -> ConnectionSettings:
        return replace(self, name=name)

    def with_inbox(self, default: str) -> ConnectionSettings:
        """The role's reply-inbox prefix, unless one was set explicitly (NATS_INBOX_PREFIX)."""
        return self if self.inbox_prefix else replace(self, inbox_prefix=default)

    def describe(self) -> str:
        """The server and the kind of credentials, never the secrets themselves."""
        in_url = any(urlsplit(u.strip()).username is not None for u in self.url.split(","))
        auth = (
            "creds"
            if self.creds
            else "nkey"
            if self.nkey_seed
            else "user/password"
            if self.user
            else "token"
            if self.token
            else "credentials in the URL"
            if in_url
            else "no auth"
        )
        tls = ", TLS" if self.tls_ca or self.url.startswith("tls://") else ""
        return f"{redact_url(self.url)} ({auth}{tls})"


def redact_url(url: str) -> str:
    """``url`` (comma-separated servers) with any password or token in it replaced by ``***``:
    a URL like ``nats://user:secret@host`` was written to every service's log."""
    servers = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.username is None and parts.password is None:
            servers.append(server.strip())
            continue
        host = parts.netloc.rpartition("@")[2]
        who = f"{parts.username}:***" if parts.password is not None else "***"  # alone: a token
        servers.append(parts._replace(netloc=f"{who}@{host}").geturl())
    return ",".join(servers)
