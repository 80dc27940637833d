"""The domain model: frozen, validated dataclasses.

A model that exists is valid: every check lives in ``__post_init__`` and raises
:class:`~natsched.errors.SpecError` naming the field. Conversion from and to plain
mappings (job files, wire payloads) lives in ``jobspec.py``; encoding in ``codec.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from natsched import subjects
from natsched.calendars import CalendarRule
from natsched.errors import SpecError
from natsched.triggers.cron import validate_cron, validate_timezone


class Mode(StrEnum):
    """Who decides when a job runs, and who runs it (see DESIGN.md)."""

    MIRROR = "mirror"
    SLAVE = "slave"
    LOAD_BALANCE = "load-balance"


class Overlap(StrEnum):
    """What to do when a job is due while a run of it is still going."""

    ALLOW = "allow"
    FORBID = "forbid"
    REPLACE = "replace"
    QUEUE = "queue"


class Misfire(StrEnum):
    """What to do with slots that fell due while nobody could fire them."""

    SKIP = "skip"
    RUN_ONCE = "run-once"
    RUN_ALL = "run-all"


class Balance(StrEnum):
    """How a load-balance job picks its agent among the live ones of its pool."""

    PRIORITY = "priority"
    LOAD = "load"
    CPU = "cpu"
    MEMORY = "memory"
    RUNNING = "running"


EventCondition = Literal["succeeded", "failed", "completed"]
FileEvent = Literal["created", "modified", "moved"]
ALL_AGENTS = "*"


def _fail(field_name: str, message: str) -> SpecError:
    return SpecError(message, field=field_name)


def _check_tokens(field_name: str, values: tuple[str, ...], *, allow_all: bool = False) -> None:
    for value in values:
        if allow_all and value == ALL_AGENTS:
            continue
        if not subjects.is_token(value):
            raise _fail(field_name, f"{subjects.shown(value)} must be {subjects.TOKEN_RULE}")


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentIdentity:
    """What an agent is, for deciding which jobs target it."""

    name: str
    tags: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()  # empty: every group

    def takes(self, group: str, targets: Targets) -> bool:
        """Is a job of ``group`` with ``targets`` for this agent (its group filter included)?"""
        return (not self.groups or group in self.groups) and targets.matches(self)

    def __post_init__(self) -> None:
        _check_tokens("agent", (self.name,))
        _check_tokens("tags", tuple(self.tags))
        _check_tokens("pools", tuple(self.pools))
        _check_tokens("groups", tuple(self.groups))


@dataclass(frozen=True, kw_only=True, slots=True)
class Targets:
    """Which agents a job is for: by name (``"*"`` for all), by tag, or by pool."""

    agents: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.agents or self.tags or self.pools):
            raise _fail("targets", 'names no agent, tag or pool; use agents = ["*"] for every agent')
        _check_tokens("targets.agents", self.agents, allow_all=True)
        _check_tokens("targets.tags", self.tags)
        _check_tokens("targets.pools", self.pools)

    def matches(self, agent: AgentIdentity) -> bool:
        """True if ``agent`` is one of the targets."""
        if ALL_AGENTS in self.agents or agent.name in self.agents:
            return True
        return bool(agent.tags.intersection(self.tags) or agent.pools.intersection(self.pools))


@dataclass(frozen=True, kw_only=True, slots=True)
class CronTrigger:
    """Fire on a cron grid; 6 fields means a leading seconds field."""

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        try:
            validate_cron(self.cron)
        except ValueError as exc:
            raise _fail("triggers.cron", str(exc)) from None
        try:
            validate_timezone(self.timezone)
        except ValueError as exc:
            raise _fail("triggers.timezone", str(exc)) from None


@dataclass(frozen=True, kw_only=True, slots=True)
class IntervalTrigger:
    """Fire every ``every`` seconds on a grid anchored at ``start`` (epoch if absent)."""

    every: float
    start: datetime | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.every < 0.1:
            raise _fail("triggers.every", f"interval {self.every}s is shorter than the 0.1s minimum")
        if self.start is not None and self.start.tzinfo is None:
            raise _fail("triggers.start", "needs a time zone offset, e.g. 2026-01-01T00:00:00Z")
        if not 0 <= self.jitter < self.every:
            raise _fail("triggers.jitter", "must be at least 0 and shorter than the interval")


@dataclass(frozen=True, kw_only=True, slots=True)
class OnceTrigger:
    """Fire once, at ``at``."""

    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise _fail("triggers.at", "needs a time zone offset, e.g. 2026-01-01T09:00:00+01:00")


@dataclass(frozen=True, kw_only=True, slots=True)
class FileTrigger:
    """Fire once per file matching ``patterns`` in ``watch`` that became stable."""

    watch: str
    patterns: tuple[str, ...] = ("*",)
    events: tuple[FileEvent, ...] = ("created", "modified", "moved")
    settle: float = 2.0
    recursive: bool = False

    def __post_init__(self) -> None:
        if not self.watch.startswith("/"):
            raise _fail("triggers.watch", f"{self.watch!r} must be an absolute directory path")
        if not self.patterns:
            raise _fail("triggers.patterns", "needs at least one glob pattern")
        for event in self.events:
            if event not in ("created", "modified", "moved"):
                raise _fail("triggers.events", f"unknown file event {event!r}")
        if self.settle < 0:
            raise _fail("triggers.settle", "must not be negative")


@dataclass(frozen=True, kw_only=True, slots=True)
class EventTrigger:
    """Fire when upstream jobs (``<group>.<job>`` keys) complete with ``on``.

    ``wait = "all"``: fire once every upstream of the same chain run has completed as
    asked, failing the chain after ``timeout`` seconds. ``agents``: only completions on
    these agents count. ``per_agent``: a slave upstream triggers once per agent's run
    instead of once when all its targets are done.
    """

    after: tuple[str, ...]
    on: EventCondition = "succeeded"
    exit_codes: tuple[int, ...] = ()
    agents: tuple[str, ...] = ()
    wait: Literal["all", "any"] = "any"
    timeout: float = 3600.0
    per_agent: bool = False

    def __post_init__(self) -> None:
        if not self.after:
            raise _fail("triggers.after", "names no upstream job")
        for key in self.after:
            try:
                subjects.split_job_key(key)
            except ValueError as exc:
                raise _fail("triggers.after", str(exc)) from None
        if len(set(self.after)) != len(self.after):
            raise _fail("triggers.after", "names the same upstream job twice")
        if self.on not in ("succeeded", "failed", "completed"):
            raise _fail("triggers.on", f"{self.on!r} is not one of succeeded, failed, completed")
        if self.wait not in ("all", "any"):
            raise _fail("triggers.wait", f"{self.wait!r} is not 'all' or 'any'")
        if self.on == "succeeded" and self.exit_codes and 0 not in self.exit_codes:
            raise _fail(
                "triggers.exit_codes",
                f"on = 'succeeded' means exit code 0, so exit codes {list(self.exit_codes)} can never fire",
            )
        if self.timeout <= 0:
            raise _fail("triggers.timeout", "must be positive")
        _check_tokens("triggers.agents", self.agents)

    def accepts(self, state: str, exit_code: int | None, agent: str) -> bool:
        """Does an upstream completion (final ``state``) satisfy this trigger's condition?"""
        if self.agents and agent not in self.agents:
            return False
        if self.exit_codes:
            return exit_code is not None and exit_code in self.exit_codes
        if self.on == "succeeded":
            return state == "succeeded"
        if self.on == "failed":
            return state in ("failed", "timed_out", "killed", "lost")
        return state in ("succeeded", "failed", "timed_out", "killed", "lost")


@dataclass(frozen=True, kw_only=True, slots=True)
class SubjectTrigger:
    """Fire on every message published to an operator-named subject pattern.

    The body (at most ``max_bytes``) reaches the process as ``$NATSCHED_MESSAGE`` and the
    subject as ``$NATSCHED_SUBJECT``. ``match``: only JSON bodies whose fields (dotted
    paths) equal these values fire.
    """

    subject: str
    max_bytes: int = 65536
    match: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = self.subject.split(".")
        if len(self.subject) > subjects.MAX_SUBJECT_LENGTH:
            raise _fail("triggers.subject", f"is longer than {subjects.MAX_SUBJECT_LENGTH} characters")
        if not self.subject or any(not t or " " in t for t in tokens):
            raise _fail("triggers.subject", f"{self.subject!r} is not a valid NATS subject")
        if self.subject.startswith("natsched.") or self.subject.startswith("$"):
            raise _fail("triggers.subject", f"{self.subject!r} is reserved for natsched or NATS itself")
        if not 1 <= self.max_bytes <= 1_048_576:
            raise _fail("triggers.max_bytes", "must be between 1 and 1048576")


Trigger = CronTrigger | IntervalTrigger | OnceTrigger | FileTrigger | EventTrigger | SubjectTrigger


NOTIFY_ON = ("failure", "success", "lost", "chain_failed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Notify:
    """Where to tell about a job's runs: ``on`` which outcomes, to a webhook, an address, a subject."""

    on: tuple[str, ...] = ("failure", "lost", "chain_failed")
    webhook: str = ""
    email: str = ""
    subject: str = ""

    def __post_init__(self) -> None:
        for kind in self.on:
            if kind not in NOTIFY_ON:
                raise _fail("notify.on", f"{kind!r} is not one of {', '.join(NOTIFY_ON)}")
        if not (self.webhook or self.email or self.subject):
            raise _fail("notify", "names no webhook, email or subject")
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise _fail("notify.webhook", f"{self.webhook!r} is not an http(s) URL")
        if self.email and "@" not in self.email:
            raise _fail("notify.email", f"{self.email!r} is not an e-mail address")
        if len(self.subject) > subjects.MAX_SUBJECT_LENGTH:
            raise _fail("notify.subject", f"is longer than {subjects.MAX_SUBJECT_LENGTH} characters")
        if self.subject and (" " in self.subject or "*" in self.subject or ">" in self.subject):
            raise _fail("notify.subject", f"{self.subject!r} is not a plain NATS subject")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """Retries after a failed run: ``attempts`` more, exponential backoff with jitter."""

    attempts: int = 0
    backoff: float = 1.0
    max_backoff: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.attempts <= 100:
            raise _fail("retries.attempts", "must be between 0 and 100")
        if self.backoff < 0 or self.max_backoff < self.backoff:
            raise _fail("retries.backoff", "must be >= 0 and not above max_backoff")
        if not 0 <= self.jitter <= 1:
            raise _fail("retries.jitter", "is a fraction between 0 and 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    """One job definition, as stored under ``<group>.<name>`` in the jobs bucket."""

    name: str
    group: str
    command: tuple[str, ...]
    shell: bool = False
    mode: Mode = Mode.MIRROR
    targets: Targets
    triggers: tuple[Trigger, ...] = ()
    timeout: float | None = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    overlap: Overlap = Overlap.ALLOW
    misfire: Misfire = Misfire.SKIP
    misfire_cap: int = 10
    balance: Balance = Balance.PRIORITY
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    enabled: bool = True
    description: str = ""
    calendar: CalendarRule | None = None
    redispatch_lost: bool = False  # load-balance: a run lost with its agent starts again elsewhere
    notify: tuple[Notify, ...] = ()

    def __post_init__(self) -> None:
        _check_tokens("name", (self.name,))
        _check_tokens("group", (self.group,))
        if not self.command or any(not isinstance(arg, str) for arg in self.command):
            raise _fail("command", "must be a non-empty list of strings (argv)")
        if not self.command[0]:
            raise _fail("command", "the program (first element) is empty")
        if self.shell and len(self.command) != 1:
            raise _fail("command", "with shell = true, command is one string for /bin/sh -c")
        if self.timeout is not None and self.timeout <= 0:
            raise _fail("timeout", "must be positive (or absent for no timeout)")
        if not 1 <= self.misfire_cap <= 10_000:
            raise _fail("misfire_cap", "must be between 1 and 10000")
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                raise _fail("env", f"{name!r} is not a valid environment variable name")
        if self.cwd is not None and not self.cwd.startswith("/"):
            raise _fail("cwd", f"{self.cwd!r} must be an absolute path")
        self._check_mode_fits_targets_and_triggers()

    def _check_mode_fits_targets_and_triggers(self) -> None:
        if self.redispatch_lost and self.mode is not Mode.LOAD_BALANCE:
            raise _fail("redispatch_lost", "only a load-balance job has another agent to go to")
        if self.mode is Mode.LOAD_BALANCE and not self.targets.pools:
            raise _fail("targets.pools", "a load-balance job needs a pool to choose from")
        if self.mode is not Mode.MIRROR:
            for trigger in self.triggers:
                if isinstance(trigger, FileTrigger):
                    raise _fail("triggers.watch", 'file triggers are watched by agents: use mode = "mirror"')

    @property
    def key(self) -> str:
        """The job's key in the jobs bucket: ``<group>.<name>``."""
        return subjects.job_key(self.group, self.name)


@dataclass(frozen=True, kw_only=True, slots=True)
class Heartbeat:
    """What an agent publishes to the agents bucket every few seconds."""

    agent: str
    version: str
    protocol: int
    sent_at: float  # epoch seconds, agent clock
    started_at: float
    load1: float
    cpu_percent: float
    memory_percent: float
    running: int
    max_concurrency: int
    tags: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    jobs_cached: int = 0
    synced_revision: int = 0
    connected_since: float = 0.0
    priority: int = 100  # load-balance order among a pool's agents: lower first
    # run id -> job key of the runs going on (at most 1000): what becomes "lost" if the agent dies
    runs: Mapping[str, str] = field(default_factory=dict)
