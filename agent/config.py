"""Agent settings: from flags, the environment (NATSCHED_AGENT_*) and a TOML file.

Precedence: flag > environment > file > default. Example file::

    name = "db1"
    tags = ["db", "linux"]
    pools = ["backup"]
    groups = []                      # empty: every group
    state_dir = "/var/lib/natsched"
    heartbeat_interval = 3
    max_concurrency = 64
    jobs_dir = "/etc/natsched/jobs.d"  # the agent's own jobs (mirror mode, this agent only)
    sync_notify = ["ops.sync", "https://hooks.example.org/natsched", "ops@example.org"]
    sync_notify_on = ["full", "failure"]  # the default: after each full resync, and on failure
    smtp_host = "mail.example.org"   # for e-mail targets; smtp_port = 25, smtp_from = "natsched@<name>"
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from natsched.errors import ConfigError, SpecError
from natsched.jobspec import notify_target
from natsched.models import AgentIdentity, Notify
from natsched.senders import SmtpSettings
from natsched.vocab import NO_AGENT

ENV_PREFIX = "NATSCHED_AGENT_"
SYNC_NOTIFY_ON = frozenset({"full", "failure"})


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/natsched")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "natsched"


def _hostname() -> str:
    # Host names may hold dots; subjects and keys may not.
    return socket.gethostname().split(".")[0] or "agent"


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig:
    name: str = field(default_factory=_hostname)
    tags: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    state_dir: Path = field(default_factory=default_state_dir)
    heartbeat_interval: float = 3.0
    max_concurrency: int = 64
    # Runs of one job that may wait on this agent (overlap queue, --queue pause); more are skipped.
    max_queued: int = 100
    # Load-balance order among a pool's agents (lower first), when a job balances by priority.
    priority: int = 100
    # How often the cache's position is checked against the bucket's stream (catches a
    # bucket deleted and recreated under a live watcher).
    sync_check_interval: float = 5.0
    # On shutdown, running jobs get this long to finish before they are killed.
    shutdown_grace: float = 10.0
    # After SIGTERM, a process tree gets this long before SIGKILL.
    kill_grace: float = 5.0
    # Key for ${secret:NAME} in job definitions (natsched secrets keygen); none: such jobs fail.
    secret_key_file: Path | None = None
    # Prometheus metrics on this port (off when unset).
    metrics_port: int | None = None
    # The agent's own job files (*.toml, *.json), run in mirror mode here only (agent/localjobs.py).
    jobs_dir: Path | None = None
    local_scan_interval: float = 1.0
    # Where each sync report goes (agent/syncnotify.py): http(s) URLs, e-mail addresses, subjects.
    sync_notify: frozenset[str] = frozenset()
    sync_notify_on: frozenset[str] = SYNC_NOTIFY_ON
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = ""

    def __post_init__(self) -> None:
        try:
            self.identity()
        except SpecError as exc:
            raise ConfigError(f"agent config: {exc}") from None
        if self.name == NO_AGENT:
            raise ConfigError(f"agent config: the name {NO_AGENT!r} is reserved (runs that reached no agent)")
        if not 0.2 <= self.heartbeat_interval <= 60:
            raise ConfigError("agent config: heartbeat_interval must be between 0.2 and 60 seconds")
        if self.max_concurrency < 1:
            raise ConfigError("agent config: max_concurrency must be at least 1")
        if self.max_queued < 0:
            raise ConfigError("agent config: max_queued cannot be negative")
        if not self.sync_notify_on <= SYNC_NOTIFY_ON:
            wrong = ", ".join(sorted(self.sync_notify_on - SYNC_NOTIFY_ON))
            raise ConfigError(f"agent config: sync_notify_on: {wrong}: use full, failure")
        for target in self.sync_notify:
            try:
                Notify(**notify_target(target))
            except SpecError as exc:
                raise ConfigError(f"agent config: sync_notify: {exc}") from None

    def sync_targets(self) -> tuple[Notify, ...]:
        return tuple(Notify(**notify_target(target)) for target in sorted(self.sync_notify))

    def smtp(self) -> SmtpSettings:
        return SmtpSettings(
            host=self.smtp_host, port=self.smtp_port, sender=self.smtp_from or f"natsched@{self.name}"
        )

    def identity(self) -> AgentIdentity:
        return AgentIdentity(name=self.name, tags=self.tags, pools=self.pools, groups=self.groups)

    @property
    def cache_path(self) -> Path:
        return self.state_dir / f"agent-{self.name}.sqlite"

    @classmethod
    def load(
        cls, *, file: Path | None = None, env: Mapping[str, str] | None = None, **flags: Any
    ) -> AgentConfig:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if file is not None:
            values.update(_read_file(file))
        for name in _field_names():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = raw
        values.update({k: v for k, v in flags.items() if v is not None and v != () and v != []})
        return cls(**_coerce(values))


def _field_names() -> list[str]:
    return [f.name for f in fields(AgentConfig)]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent config {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_field_names()))
    if unknown:
        raise ConfigError(f"agent config {path}: unknown key(s) {', '.join(unknown)}")
    return data


def _as_set(value: Any, name: str) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise ConfigError(f"agent config: {name} must be a list of names or a comma-separated string")


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in ("tags", "pools", "groups", "sync_notify", "sync_notify_on"):
        if name in out:
            out[name] = _as_set(out[name], name)
    for name in ("state_dir", "secret_key_file", "jobs_dir"):
        if out.get(name) is not None:
            out[name] = Path(out[name])
    try:
        if "heartbeat_interval" in out:
            out["heartbeat_interval"] = float(out["heartbeat_interval"])
        for name in ("sync_check_interval", "shutdown_grace", "kill_grace", "local_scan_interval"):
            if name in out:
                out[name] = float(out[name])
        for name in ("max_concurrency", "max_queued", "priority", "metrics_port", "smtp_port"):
            if name in out:
                out[name] = int(out[name])
    except ValueError as exc:
        raise ConfigError(f"agent config: {exc}") from None
    if "name" in out and not isinstance(out["name"], str):
        raise ConfigError("agent config: name must be a string")
    return out
