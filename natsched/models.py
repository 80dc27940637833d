"""The domain model: frozen, validated dataclasses.

A model that exists is valid: every check lives in ``__post_init__`` and raises
:class:`~natsched.errors.SpecError` naming the field. Conversion from and to plain
mappings (job files, wire payloads) lives in ``jobspec.py``; encoding in ``codec.py``.
Trigger kinds live one per module in ``natsched/triggers/`` (listed in its ``registry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from natsched import subjects
from natsched.calendars import CalendarRule
from natsched.errors import SecretError, SpecError
from natsched.parsing import check_tokens
from natsched.secrets import check_not_in_command
from natsched.triggerpolicy import TriggerPolicy
from natsched.triggers.base import Trigger
from natsched.triggers.file import FileTrigger

# A job field's type, defined with the policy's arithmetic and re-exported with the other job enums.
from natsched.triggers.misfire import Misfire as Misfire
from natsched.triggers.registry import check_registered


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


class Balance(StrEnum):
    """How a load-balance job picks its agent among the live ones of its pool."""

    PRIORITY = "priority"
    LOAD = "load"
    CPU = "cpu"
    MEMORY = "memory"
    RUNNING = "running"


ALL_AGENTS = "*"
DEFAULT_OUTPUT_LIMIT = 4 * 1024**2
MIN_OUTPUT_LIMIT, MAX_OUTPUT_LIMIT = 4 * 1024, 1024**3


def _fail(field_name: str, message: str) -> SpecError:
    return SpecError(message, field=field_name)


def _check_tokens(field_name: str, values: tuple[str, ...], *, allow_all: bool = False) -> None:
    check_tokens(field_name, (v for v in values if not (allow_all and v == ALL_AGENTS)))


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
    trigger: TriggerPolicy = field(default_factory=TriggerPolicy)  # what a trigger caller may change
    # Output bytes streamed to NATSCHED_LOGS per run; past it only the last quarter is kept.
    output_limit: int | None = None  # None: the group's (natsched/groupsettings.py), else the default

    def __post_init__(self) -> None:
        _check_tokens("name", (self.name,))
        _check_tokens("group", (self.group,))
        if not self.command or any(not isinstance(arg, str) for arg in self.command):
            raise _fail("command", "must be a non-empty list of strings (argv)")
        if not self.command[0]:
            raise _fail("command", "the program (first element) is empty")
        try:
            check_not_in_command(self.command)
        except SecretError as exc:
            raise _fail("command", str(exc)) from None
        if self.shell and len(self.command) != 1:
            raise _fail("command", "with shell = true, command is one string for /bin/sh -c")
        if self.timeout is not None and self.timeout <= 0:
            raise _fail("timeout", "must be positive (or absent for no timeout)")
        if self.output_limit is not None and not MIN_OUTPUT_LIMIT <= self.output_limit <= MAX_OUTPUT_LIMIT:
            raise _fail("output_limit", "must be between 4KiB and 1GiB")
        if not 1 <= self.misfire_cap <= 10_000:
            raise _fail("misfire_cap", "must be between 1 and 10000")
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                raise _fail("env", f"{name!r} is not a valid environment variable name")
        if self.cwd is not None and not self.cwd.startswith("/"):
            raise _fail("cwd", f"{self.cwd!r} must be an absolute path")
        for trigger in self.triggers:
            check_registered(trigger)
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
    def redispatches_lost(self) -> bool:
        """A run of it lost with its agent is started again elsewhere (``master/lost.py``)."""
        return self.redispatch_lost and self.mode is Mode.LOAD_BALANCE and self.enabled

    @property
    def key(self) -> str:
        """The job's key in the jobs bucket: ``<group>.<name>``."""
        # Not subjects.job_key: both names were checked when the spec was made (it is frozen),
        # and an agent asks for the key ~18 times per run.
        return f"{self.group}.{self.name}"


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
    # Where this agent process runs: a second agent with the same name names it when it refuses.
    host: str = ""
    pid: int = 0
