"""NATS permissions per natsched role, as nats-server config blocks.

Roles: ``master`` (everything natsched), ``admin`` (the CLI: API, triggers, reading streams
and buckets), ``agent`` (one per agent: only its own run/cancel subjects and its pools,
its own events, heartbeat and run claims, read-only jobs), ``trigger`` (may only publish
``natsched.trigger.<job>`` for the named jobs and read the replies), ``web`` (``natsched web``
by default: reads streams and buckets and the read-only API requests; no trigger, no change).
Each role reads replies only on its own inbox prefix (``subjects.*_INBOX``), so no role reads
another's replies. ``natsched permissions`` prints them; ``nats/`` includes the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from natsched import subjects, tls
from natsched.errors import ConfigError
from natsched.subjects import SECRETS_BUCKET

_JS = "$JS.API"
_JOBS = subjects.kv_stream(subjects.JOBS_BUCKET)
_AGENTS = subjects.kv_stream(subjects.AGENTS_BUCKET)
_STATE = subjects.kv_stream(subjects.STATE_BUCKET)
_SETTINGS = subjects.kv_stream(subjects.SETTINGS_BUCKET)


@dataclass(frozen=True, kw_only=True, slots=True)
class Permissions:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    deny_publish: list[str] = field(default_factory=list)
    deny_subscribe: list[str] = field(default_factory=list)
    allow_responses: bool = False

    def to_config(self) -> dict[str, object]:
        block: dict[str, object] = {
            "publish": {"allow": self.publish, **({"deny": self.deny_publish} if self.deny_publish else {})},
            "subscribe": {
                "allow": self.subscribe,
                **({"deny": self.deny_subscribe} if self.deny_subscribe else {}),
            },
        }
        if self.allow_responses:
            block["allow_responses"] = True
        return block


def _read_stream(stream: str) -> list[str]:
    """What an ordered consumer on ``stream`` needs: info, create/delete consumer, flow control."""
    return [
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}.>",
        f"{_JS}.CONSUMER.INFO.{stream}.>",
        f"{_JS}.CONSUMER.DELETE.{stream}.>",
        "$JS.FC.>",
    ]


# The masters' shared durable consumers on the events stream. A role that may read the stream
# may create and delete consumers on it: it must not delete these (the masters' subscriptions
# then get nothing: chains, retries and notifications stop) nor make them again with its own
# deliver subject (every completion would go to it, none to a master).
_MASTER_DURABLES = (subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE, subjects.NOTIFY_DURABLE)


def _not_the_masters_consumers() -> list[str]:
    stream = subjects.EVENTS_STREAM
    return [
        subject
        for durable in _MASTER_DURABLES
        for subject in (
            f"{_JS}.CONSUMER.CREATE.{stream}.{durable}",
            f"{_JS}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{_JS}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"{_JS}.CONSUMER.DELETE.{stream}.{durable}",
        )
    ]


def _kv_get(stream: str) -> list[str]:
    return [
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.DIRECT.GET.{stream}.>",
        f"{_JS}.DIRECT.GET.{stream}",
        f"{_JS}.STREAM.MSG.GET.{stream}",
    ]


# Replies: every role subscribes to its own inbox prefix only (subjects.*_INBOX); answering a
# request is allowed by ``allow_responses`` (the reply subject of a message it received).
_INBOX = subjects.inbox_subscription


def operator_subjects(patterns: Iterable[str], option: str) -> list[str]:
    """``patterns`` checked as subjects of the operator's own (notifications, subject
    triggers): nothing of natsched's, of JetStream's or of the reply inboxes, and no leading
    wildcard (``*.alerts`` also matches ``natsched.alerts``). Raises ConfigError."""
    checked = []
    for pattern in patterns:
        tokens = pattern.split(".")
        first = tokens[0]
        if (
            not pattern
            or len(pattern) > subjects.MAX_SUBJECT_LENGTH
            or any(not token for token in tokens)
            or any(character.isspace() for character in pattern)
            or any(">" in token and token != ">" for token in tokens)
            or ">" in tokens[:-1]
            or any("*" in token and token != "*" for token in tokens)
        ):
            raise ConfigError(f"{option} {subjects.shown(pattern)}: not a NATS subject or pattern")
        if first in ("*", ">") or first.startswith(("$", "_INBOX")) or first == subjects.ROOT:
            raise ConfigError(
                f"{option} {subjects.shown(pattern)}: must start with a name of your own, not a "
                "wildcard, '$…', '_INBOX…' or 'natsched' (those are natsched's and JetStream's)"
            )
        checked.append(pattern)
    return sorted(set(checked))


def master(notify_subjects: Iterable[str] = (), trigger_subjects: Iterable[str] = ()) -> Permissions:
    """``notify_subjects``: where it may publish notifications (``notify.subject``);
    ``trigger_subjects``: subject-trigger patterns it may follow live (one that overlaps
    another stream; those in natsched's own stream need nothing here)."""
    notify = operator_subjects(notify_subjects, "--notify-subject")
    triggers = operator_subjects(trigger_subjects, "--trigger-subject")
    return Permissions(
        publish=["natsched.>", f"{_JS}.>", "$KV.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>", *notify],
        # The default _INBOX too (the nats CLI with a master login); the admin prefix for the
        # natsched commands run with a master login.
        subscribe=[
            "natsched.>",
            _INBOX(subjects.MASTER_INBOX),
            _INBOX(subjects.ADMIN_INBOX),
            "_INBOX.>",
            *triggers,
        ],
        allow_responses=True,
    )


def admin() -> Permissions:
    return Permissions(
        publish=[
            f"{subjects.API_PREFIX}.>",
            f"{subjects.TRIGGER_PREFIX}.>",
            subjects.MASTERS_STATUS,
            "natsched.agent.*.sync",  # natsched sync-report
            *_read_stream(subjects.EVENTS_STREAM),
            *_read_stream(subjects.LOGS_STREAM),
            *_read_stream(_JOBS),
            *_read_stream(_AGENTS),
            *_read_stream(subjects.kv_stream(subjects.CHAINS_BUCKET)),  # runs --chain: fan-ins waiting
        ],
        deny_publish=_not_the_masters_consumers(),
        # The web inbox and heartbeat updates too: ``natsched web --actions`` runs with an admin login.
        subscribe=[
            _INBOX(subjects.ADMIN_INBOX),
            _INBOX(subjects.WEB_INBOX),
            subjects.EVENTS_SUBJECTS,
            subjects.kv_updates(subjects.AGENTS_BUCKET),
        ],
    )


# API requests that only read: what the web role may ask a master.
WEB_API = (subjects.API_PING, subjects.API_JOBS_LIST, subjects.API_JOBS_GET, subjects.API_CALENDARS_LIST)


def web() -> Permissions:
    """``natsched web``'s default: everything the dashboard shows, nothing that changes a thing.

    No trigger, no admin request that writes, no secrets bucket, no state bucket; its replies
    arrive on its own inbox prefix.
    """
    return Permissions(
        publish=[
            *WEB_API,
            subjects.MASTERS_STATUS,
            *_read_stream(subjects.EVENTS_STREAM),
            *_read_stream(subjects.LOGS_STREAM),
            *_read_stream(_AGENTS),
            *_read_stream(subjects.kv_stream(subjects.CHAINS_BUCKET)),  # fan-ins waiting
        ],
        deny_publish=_not_the_masters_consumers(),
        subscribe=[
            _INBOX(subjects.WEB_INBOX),
            subjects.EVENTS_SUBJECTS,
            subjects.kv_updates(subjects.AGENTS_BUCKET),
        ],
    )


def agent(
    name: str, pools: Iterable[str] = (), notify_subjects: Iterable[str] = (), tags: Iterable[str] = ()
) -> Permissions:
    """``notify_subjects``: where it may publish its sync notifications (``sync_notify``);
    ``tags``: the tags it may prove (masters count only those of its heartbeat)."""
    pools = sorted(pools)
    return Permissions(
        publish=[
            *operator_subjects(notify_subjects, "--notify-subject"),
            f"natsched.event.{name}.>",
            subjects.agent_logs(name),
            f"$KV.{subjects.AGENTS_BUCKET}.{name}",
            subjects.lock_subject(name),  # overlap locks, taken by a master in this agent's name
            # Its own run claims only: it cannot take or withdraw another agent's runs.
            *subjects.agent_claims_subjects(name, pools, sorted(tags)),
            *_kv_get(subjects.kv_stream(subjects.CLAIMS_BUCKET)),
            *_read_stream(_JOBS),
            *_read_stream(_SETTINGS),  # calendars and pauses, cached for offline use
            *_kv_get(_AGENTS),
            *_kv_get(subjects.kv_stream(SECRETS_BUCKET)),  # ciphertext; the key is on the agent
            *_kv_get(_STATE),
        ],
        subscribe=[
            f"natsched.agent.{name}.>",
            # Only in the pool's queue group: a member sees the runs handed to it, not every one.
            *(f"{subjects.pool_run_subject(p)} {subjects.pool_queue(p)}" for p in pools),
            _INBOX(subjects.agent_inbox(name)),
        ],
        allow_responses=True,
    )


def trigger(jobs: Iterable[str]) -> Permissions:
    return Permissions(
        publish=[subjects.trigger_subject(job) for job in sorted(jobs)],
        subscribe=[_INBOX(subjects.TRIGGER_INBOX)],
    )


def cert_users_block(users: dict[str, Permissions]) -> str:
    """``authorization { users = [...] }`` for certificate-mapped users (``verify_and_map``):
    identity name -> permissions; the user is the certificate's e-mail SAN, no password."""
    entries = [
        {"user": tls.cert_identity(name), "permissions": permissions.to_config()}
        for name, permissions in sorted(users.items())
    ]
    return "authorization {\n  users = " + json.dumps(entries, indent=2).replace("\n", "\n  ") + "\n}\n"


def users_block(users: dict[str, tuple[str, Permissions]]) -> str:
    """``authorization { users = [...] }`` for nats-server, from user -> (password, permissions).

    Passwords here may be bcrypt hashes (``nats server passwd``) or plain text for tests.
    """
    entries = [
        {"user": user, "password": password, "permissions": permissions.to_config()}
        for user, (password, permissions) in sorted(users.items())
    ]
    # nats-server's config format accepts JSON values.
    return "authorization {\n  users = " + json.dumps(entries, indent=2).replace("\n", "\n  ") + "\n}\n"
