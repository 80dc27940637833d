"""The one exception tree of natsched.

Every error natsched raises on purpose derives from :class:`NatschedError`, so a caller
(and the CLI, which turns it into one readable line and exit code 1) can catch them all.
Each subclass also inherits the builtin it resembles, so generic code keeps working::

    NatschedError
    ├── ConfigError(ValueError)          bad settings, flags or environment
    │   └── NameTakenError               another live agent runs under this agent's name
    ├── SpecError(ValueError)            a job definition is invalid (names file, job, field)
    │   ├── JobFileError                 a job file cannot be read or parsed at all
    │   └── TriggerRefusedError          a trigger asks for what its job's policy does not allow
    ├── CodecError(ValueError)           a payload is not what the wire format promises
    │   └── VersionError                 a payload of a protocol version we do not speak
    ├── NotConnectedError(ConnectionError)  NATS is unreachable, or no master answered
    │   ├── NoMasterError                 nobody serves natsched.api.*
    │   ├── ClaimUndecidedError           NATS did not say who claimed a run (nobody runs it)
    │   └── StartUnansweredError          JetStream did not answer while a service started
    ├── ApiError(RuntimeError)           the master answered a request with an error
    ├── NotFoundError(LookupError)       a job, agent or run that does not exist
    ├── ConflictError(RuntimeError)      someone else changed the thing in between (CAS)
    ├── IndexNotReady(TimeoutError)      the master's job index did not catch up with the bucket in time
    ├── ServerError(RuntimeError)        the embedded nats-server could not start
    ├── RunError(RuntimeError)           a process could not be started
    ├── SecretError                      a secret cannot be used (never holds its value)
    ├── CheckFailed                      natsched-agent --check: the one line to print
    └── NotOpenError(RuntimeError)       a client or cache used before it was opened
"""

from __future__ import annotations


class NatschedError(Exception):
    """Root of every error natsched raises on purpose."""


class ConfigError(NatschedError, ValueError):
    """Settings, flags or environment variables that cannot work."""


class NameTakenError(ConfigError):
    """Another agent with this name is alive (its heartbeat has not expired): refuse to run twice."""


class SpecError(NatschedError, ValueError):
    """A job definition that fails validation.

    ``source`` is the file (or subject) it came from, ``job`` the job's name and
    ``field`` the offending field, so an operator can find the line at once.
    """

    def __init__(self, message: str, *, source: str = "", job: str = "", field: str = "") -> None:
        self.message = message
        self.source = source
        self.job = job
        self.field = field
        super().__init__(self.__str__())

    def located(self, *, source: str | None = None, job: str | None = None) -> SpecError:
        """Return a copy that also names where the definition came from."""
        return type(self)(
            self.message,
            source=self.source or (source or ""),
            job=self.job or (job or ""),
            field=self.field,
        )

    def __str__(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.job:
            where.append(f"job {self.job!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class JobFileError(SpecError):
    """A job file that cannot be read or parsed, or holds invalid jobs (all listed in ``errors``)."""

    errors: list[str]

    def __init__(self, message: str, *, source: str = "", job: str = "", field: str = "") -> None:
        super().__init__(message, source=source, job=job, field=field)
        self.errors = [str(self)]


class TriggerRefusedError(SpecError):
    """A trigger's args or env that its job's ``trigger`` policy does not allow (names the field)."""


class CodecError(NatschedError, ValueError):
    """A payload that is not what the wire format promises."""


class VersionError(CodecError):
    """A payload written by a newer (or unknown) protocol version."""


class NotConnectedError(NatschedError, ConnectionError):
    """NATS is unreachable within the allowed time."""


class NoMasterError(NotConnectedError):
    """No master answers on natsched.api.*."""


class ClaimUndecidedError(NotConnectedError):
    """Writing or reading a run's claim failed: nobody may start the run on this basis."""


class StartUnansweredError(NotConnectedError):
    """JetStream timed out or had no responder while a service started (a cluster electing its
    leaders, a server restarting): starting again a little later is likely to work."""


class ApiError(NatschedError, RuntimeError):
    """The master answered an API request with an error; ``details`` lists every problem."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class NotFoundError(NatschedError, LookupError):
    """A job, agent or run that does not exist."""


class ConflictError(NatschedError, RuntimeError):
    """A compare-and-set failed: someone else changed the value in between."""


class IndexNotReady(NatschedError, TimeoutError):
    """The master's job index did not catch up with the jobs bucket in time."""


class ServerError(NatschedError, RuntimeError):
    """The embedded nats-server could not be started."""


class RunError(NatschedError, RuntimeError):
    """A job's process could not be started."""


class SecretError(NatschedError):
    """A secret that cannot be used (missing, undecryptable, no key); never contains a value."""


class CheckFailed(NatschedError):
    """A check that failed (``natsched-agent --check``); its message is the one line to print."""


class NotOpenError(NatschedError, RuntimeError):
    """A client or cache used before it was opened or after it was closed (a bug in the caller)."""
