"""Every NATS subject, KV bucket, stream and queue-group name natsched uses.

Nothing else spells these strings: a subject typed in two files is a bug waiting to
happen. Functions build the parameterised ones and validate their tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# --- KV buckets -------------------------------------------------------------------
JOBS_BUCKET = "natsched_jobs"  # key "<group>.<job>", value: msgpack job spec
SETTINGS_BUCKET = "natsched_settings"  # replicated settings per group
AGENTS_BUCKET = "natsched_agents"  # key "<agent>", value: msgpack heartbeat, TTL bucket
STATE_BUCKET = "natsched_state"  # leader lease, schedule cursors, overlap locks
SECRETS_BUCKET = "natsched_secrets"  # key "<name>", value: nonce + AES-GCM ciphertext (secrets.py)
CHAINS_BUCKET = "natsched_chains"  # chain progress: batch.*, fanin.*, chain.* (expires, see buckets.py)
# Who starts a dispatched run (natsched/claims.py): keys "agent.<agent>.<run_id>" and
# "pool.<pool>.<run_id>", written once, by the agent that runs it or by the master that gave up;
# "member.<pool>.<agent>", an agent's proof that its credential lets it into a pool; and
# "offer.<run_id>", the one open offer of a load-balance run that may be sent again (masters).
# Nothing else lives here: agents may write their own keys, and no writer may roll the bucket up.
CLAIMS_BUCKET = "natsched_claims"

ROOT = "natsched"  # the first token of every subject of natsched's own

# --- Streams ----------------------------------------------------------------------
EVENTS_STREAM = "NATSCHED_EVENTS"
EVENTS_SUBJECTS = "natsched.event.>"
LOGS_STREAM = "NATSCHED_LOGS"
# Subject-trigger messages, kept while no master runs; its subjects are the enabled jobs'
# patterns (master/subjectstream.py), or only SUBJECTS_IDLE when no job has one.
SUBJECTS_STREAM = "NATSCHED_SUBJECTS"
SUBJECTS_IDLE = "natsched.subjects.idle"  # nobody publishes here: a stream needs one subject
LOGS_SUBJECTS = "natsched.log.>"

# --- Admin API (served by the master in a queue group) -----------------------------
API_PREFIX = "natsched.api"
API_ALL = f"{API_PREFIX}.>"
API_QUEUE = "natsched-master"
API_APPLY = f"{API_PREFIX}.apply"
API_JOBS_LIST = f"{API_PREFIX}.jobs.list"
API_JOBS_GET = f"{API_PREFIX}.jobs.get"
API_JOBS_DELETE = f"{API_PREFIX}.jobs.delete"
API_JOBS_ENABLE = f"{API_PREFIX}.jobs.enable"
API_JOBS_DISABLE = f"{API_PREFIX}.jobs.disable"
API_PING = f"{API_PREFIX}.ping"
API_RUNS_CANCEL = f"{API_PREFIX}.runs.cancel"
API_CALENDARS_SET = f"{API_PREFIX}.calendars.set"
API_CALENDARS_LIST = f"{API_PREFIX}.calendars.list"
API_CALENDARS_DELETE = f"{API_PREFIX}.calendars.delete"
API_PAUSE = f"{API_PREFIX}.pause"
API_RESUME = f"{API_PREFIX}.resume"
API_SECRETS_SET = f"{API_PREFIX}.secrets.set"
API_SECRETS_LIST = f"{API_PREFIX}.secrets.list"
API_SECRETS_DELETE = f"{API_PREFIX}.secrets.delete"
API_SETTINGS_SET = f"{API_PREFIX}.settings.set"  # a group's replicated settings
API_SETTINGS_GET = f"{API_PREFIX}.settings.get"
API_SETTINGS_DELETE = f"{API_PREFIX}.settings.delete"
MASTERS_STATUS = "natsched.masters.status"  # every master answers (no queue group): leader, term

# --- Triggers and dispatch ---------------------------------------------------------
TRIGGER_PREFIX = "natsched.trigger"
TRIGGER_ALL = f"{TRIGGER_PREFIX}.>"
TRIGGER_QUEUE = "natsched-master"  # one master handles each trigger
SUBJECT_TRIGGER_QUEUE = "natsched-subjects"  # durable consumer on SUBJECTS_STREAM, shared by masters
CHAINS_DURABLE = "natsched-chains"  # durable consumer on final run events, shared by masters
RETRIES_DURABLE = "natsched-retries"  # durable consumer on failed runs, shared by masters
NOTIFY_DURABLE = "natsched-notify"  # durable consumer on final run events, for notifications
# An agent's full resync (agent/fullread.py): ephemeral consumers on the jobs bucket's stream,
# named <this>_<random> (the name is known before their first message arrives).
FULL_READ_CONSUMER = "fullread"

# --- Reply inboxes, one prefix per role ----------------------------------------------
# nats-py's default ``_INBOX`` is shared: a role allowed to subscribe there reads every
# reply. Each role connects with its own prefix and may subscribe to that prefix only.
MASTER_INBOX = "_INBOX_master"
ADMIN_INBOX = "_INBOX_admin"  # the CLI's default (natsched commands, --inbox-prefix to change)
TRIGGER_INBOX = "_INBOX_trigger"
WEB_INBOX = "_INBOX_web"  # natsched web (read-only role by default)


# Where a durable consumer every master shares pushes its messages: one fixed subject per
# consumer (under the masters' inbox, so no other role can read it). With an inbox of its own
# each, the master that lost the race to create the consumer listened where nothing came.
MASTER_DELIVER_PREFIX = f"{MASTER_INBOX}.deliver."


def master_deliver_subject(durable: str) -> str:
    return f"{MASTER_DELIVER_PREFIX}{durable}"


# Tokens we splice into subjects and KV keys: no dots, wildcards or whitespace, and short:
# nats-server closes a connection whose control line (subject, reply, sizes) passes
# max_control_line (4 KB by default), and nats-py then stays closed for good. Every name
# (job, group, agent, tag, pool, calendar, secret) is one token, so a subject natsched
# builds stays far below that: the longest, an event subject, is under 260 bytes.
MAX_NAME_LENGTH = 64
# Operator-named subjects (subject triggers, notification subjects) have their own bound.
MAX_SUBJECT_LENGTH = 256
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
TOKEN_RULE = f"1 to {MAX_NAME_LENGTH} letters, digits, '_' or '-'"


def is_token(value: object) -> bool:
    """True if ``value`` is a string that can be one token of a subject or KV key."""
    return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and bool(_TOKEN.match(value))


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line never echoes 5 KB of input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def _token(value: str, what: str) -> str:
    if not is_token(value):
        raise ValueError(f"{what} {shown(value)} must be {TOKEN_RULE}")
    return value


def agent_inbox(agent: str) -> str:
    """Reply-inbox prefix of one agent: no other agent (nor the trigger role) can read it."""
    return f"_INBOX_agent_{_token(agent, 'agent name')}"


INBOX_PREFIX_RULE = "_INBOX or _INBOX_ followed by letters, digits, '_' or '-'"


def is_inbox_prefix(value: str) -> bool:
    """True if ``value`` can be a reply-inbox prefix: one token, ``_INBOX`` or ``_INBOX_<name>``
    (an agent's is its name + 13); the masters answer no reply outside those (``is_reply_inbox``)."""
    return (
        len(value) <= MAX_NAME_LENGTH + 32
        and bool(_TOKEN.match(value))
        and (value == "_INBOX" or value.startswith("_INBOX_"))
    )


def is_reply_inbox(reply: str) -> bool:
    """True if a master may answer on ``reply``: a requester's inbox, never the subjects the
    masters' shared consumers push to (``master_deliver_subject``).

    The master answers with its own permissions (every KV key, the JetStream API, any subject
    a subject trigger listens on, and any reply through ``allow_responses``): a reply subject
    chosen by a trigger caller, the web role or an agent must not make it write a job's key,
    delete one (a reply copies the request's headers) or start a subject-triggered job.
    """
    prefix, dot, rest = reply.partition(".")
    return (
        bool(dot and rest)
        and is_inbox_prefix(prefix)
        and not reply.startswith(MASTER_DELIVER_PREFIX)
        and all(token and token not in ("*", ">") for token in rest.split("."))
        and not any(c.isspace() for c in reply)
    )


def inbox_subscription(prefix: str) -> str:
    """What a role may subscribe to for its replies (its own inbox prefix, nothing more)."""
    if not is_inbox_prefix(prefix):
        raise ValueError(f"inbox prefix {shown(prefix)}: {INBOX_PREFIX_RULE}")
    return f"{prefix}.>"


def job_key(group: str, name: str) -> str:
    """KV key of a job in JOBS_BUCKET: groups are key prefixes."""
    return f"{_token(group, 'group')}.{_token(name, 'job name')}"


def split_job_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`job_key`."""
    group, sep, name = key.partition(".")
    if not sep or not is_token(group) or not is_token(name):
        raise ValueError(f"{shown(key)} is not a job key <group>.<job> (each {TOKEN_RULE})")
    return group, name


def is_job_ref(value: object) -> bool:
    """A job as people name it: ``<group>.<job>`` or a bare job name."""
    if not isinstance(value, str):
        return False
    group, sep, name = value.partition(".")
    return is_token(group) and (not sep or is_token(name))


def trigger_subject(job: str) -> str:
    """Anyone may publish here to start ``job`` (``<group>.<job>`` or a bare name)."""
    return f"{TRIGGER_PREFIX}.{job}"


def agent_run_subject(agent: str) -> str:
    """Slave dispatch to one agent, request/reply."""
    return f"natsched.agent.{_token(agent, 'agent name')}.run"


def agent_sync_subject(agent: str) -> str:
    """Request/reply, JSON: the agent's sync report (what its cache took in, when)."""
    return f"natsched.agent.{_token(agent, 'agent name')}.sync"


def agent_cancel_subject(agent: str) -> str:
    """Cancel a run on one agent, request/reply."""
    return f"natsched.agent.{_token(agent, 'agent name')}.cancel"


def pool_queue(pool: str) -> str:
    """Queue group of a pool's agents on its run subject: one of them takes each request."""
    return f"natsched-pool-{_token(pool, 'pool name')}"


def pool_run_subject(pool: str) -> str:
    """Load-balance fallback dispatch, served in a queue group by the pool's agents."""
    return f"natsched.pool.{_token(pool, 'pool name')}.run"


def job_from_trigger_subject(subject: str) -> str:
    """``natsched.trigger.<group>.<job>`` -> ``<group>.<job>`` (or a bare job name)."""
    return subject[len(TRIGGER_PREFIX) + 1 :]


# --- Keys inside buckets --------------------------------------------------------------
LEASE_KEY = "leader"  # STATE_BUCKET: the leader lease (lease.py)
LOCKS = "lock.>"  # STATE_BUCKET: every cluster-wide overlap lock
AGENT_LIVES = "life.>"  # STATE_BUCKET: the agent lives leaders saw (master/roster.py)
PAUSES = "pause.>"  # SETTINGS_BUCKET: every job and agent pause
GROUP_SETTINGS_PREFIX = "group."  # SETTINGS_BUCKET: group.<group> = a group's replicated settings
TAG_SETTINGS_INFIX = ".tag."  # group.<group>.tag.<tag>: the group's settings for agents with <tag>
FANINS = "fanin.>"  # CHAINS_BUCKET: every fan-in that still waits


LOCK_PREFIX = "natsched.lock"  # agents ask a master for cluster-wide locks (master/locks.py)
LOCK_ALL = f"{LOCK_PREFIX}.*"


def group_settings_key(group: str, tag: str | None = None) -> str:
    """SETTINGS_BUCKET key of a group's settings (replication mode, env, user, cwd), or of what
    they are for agents with ``tag`` (``group.<group>.tag.<tag>``)."""
    key = f"{GROUP_SETTINGS_PREFIX}{_token(group, 'group name')}"
    return key if tag is None else f"{key}{TAG_SETTINGS_INFIX}{_token(tag, 'tag')}"


def split_group_settings_key(key: str) -> tuple[str, str | None] | None:
    """(group, tag or None) of a group settings key; None for any other key."""
    if not key.startswith(GROUP_SETTINGS_PREFIX):
        return None
    group, infix, tag = key[len(GROUP_SETTINGS_PREFIX) :].partition(TAG_SETTINGS_INFIX)
    if not is_token(group) or (infix and not is_token(tag)):
        return None
    return group, (tag if infix else None)


def lock_subject(agent: str) -> str:
    """Where ``agent`` asks the masters (queue group) to take or free a cluster-wide lock."""
    return f"{LOCK_PREFIX}.{_token(agent, 'agent name')}"


def agent_life_key(agent: str) -> str:
    """STATE_BUCKET key of the life of ``agent`` a leader saw last (its heartbeat then)."""
    return f"life.{_token(agent, 'agent name')}"


def life_agent(key: str) -> str:
    """The agent an :func:`agent_life_key` names."""
    return key.partition(".")[2]


def lock_key(job_key: str) -> str:
    """STATE_BUCKET key of a load-balance job's cluster-wide overlap lock."""
    return f"lock.{job_key}"


HELD_RUNS = "held.>"  # STATE_BUCKET: runs of jobs paused with --queue, started on resume


def held_runs(job_key: str) -> str:
    """STATE_BUCKET: the runs of one job held by its pause."""
    return f"held.{job_key}.*"


def held_run_key(job_key: str, held_id: str) -> str:
    """STATE_BUCKET key of one run held by its job's pause (``--queue``)."""
    return f"held.{job_key}.{held_id}"


def held_run_job(key: str) -> str:
    """``held.<group>.<job>.<id>`` -> ``<group>.<job>``."""
    return key[len("held.") :].rsplit(".", 1)[0]


def retry_key(run_id: str) -> str:
    """STATE_BUCKET key claiming the retry of a failed run (one master schedules it)."""
    return f"retry.{run_id}"


def chain_batch_key(batch: str) -> str:
    """CHAINS_BUCKET: the completions collected from one slave batch's targets."""
    return f"batch.{batch}"


def chain_fanin_key(chain_id: str, job_key: str) -> str:
    """CHAINS_BUCKET: the upstream completions a fan-in of one chain run has seen."""
    return f"fanin.{chain_id}.{job_key}"


def chain_fanins(chain_id: str) -> str:
    """CHAINS_BUCKET: every fan-in still waiting in one chain run."""
    return f"fanin.{chain_id}.>"


def trigger_record_key(job_key: str, trigger_id: str) -> str:
    """CHAINS_BUCKET: a trigger request's id and outcome, so a repeat starts nothing new."""
    return f"trigger.{job_key}.{_token(trigger_id, 'trigger id')}"


def chain_claim_key(job_key: str, claim_id: str) -> str:
    """CHAINS_BUCKET: created once by the master that starts ``job_key`` for ``claim_id``."""
    return f"chain.{job_key}.{claim_id}"


def agent_events(agent: str) -> str:
    """Every event of one agent's runs."""
    return f"natsched.event.{_token(agent, 'agent name')}.>"


def events_matching(job: str | None = None, agent: str | None = None, state: str | None = None) -> str:
    """Events of a job (``<group>.<job>``), an agent and a state; None matches any."""
    return f"natsched.event.{agent or '*'}.{job or '*.*'}.{state or '*'}"


def agent_claim_key(agent: str, run_id: str) -> str:
    """CLAIMS_BUCKET key of a run dispatched to one agent (slave, or load-balance by name)."""
    return f"agent.{_token(agent, 'agent name')}.{_token(run_id, 'run id')}"


def pool_claim_key(pool: str, run_id: str) -> str:
    """CLAIMS_BUCKET key of a run dispatched to a pool's queue group (any member may take it)."""
    return f"pool.{_token(pool, 'pool name')}.{_token(run_id, 'run id')}"


def offer_key(run_id: str) -> str:
    """CLAIMS_BUCKET key naming the one target a repeatable load-balance run is offered to now
    (natsched/master/offers.py); written by masters only."""
    return f"offer.{_token(run_id, 'run id')}"


def is_claim_key(key: str) -> bool:
    """True for ``agent.<agent>.<run_id>`` or ``pool.<pool>.<run_id>``."""
    kind, _, rest = key.partition(".")
    name, _, run_id = rest.partition(".")
    return kind in ("agent", "pool") and is_token(name) and is_token(run_id)


def is_pool_claim_key(key: str) -> bool:
    """True for ``pool.<pool>.<run_id>`` (a claim from a pool's queue group)."""
    return is_claim_key(key) and key.startswith("pool.")


def claims_of(agent: str, pools: Iterable[str]) -> list[str]:
    """CLAIMS_BUCKET key filters of the runs ``agent`` may have claimed: by its name, or from
    the queue group of one of ``pools`` (whose claims name the agent in their value)."""
    return [
        f"agent.{_token(agent, 'agent name')}.*",
        *(f"pool.{_token(pool, 'pool name')}.*" for pool in sorted(pools)),
    ]


def claim_run_id(key: str) -> str:
    """The run id of a claim key (``agent.<agent>.<run_id>`` or ``pool.<pool>.<run_id>``)."""
    return key.split(".", 2)[-1]


def pool_member_key(pool: str, agent: str) -> str:
    """CLAIMS_BUCKET key an agent writes to prove it is a member of ``pool``: only a credential
    of that pool may write it, whatever pools the agent's (self-written) heartbeat names."""
    return f"member.{_token(pool, 'pool name')}.{_token(agent, 'agent name')}"


def tag_member_key(tag: str, agent: str) -> str:
    """CLAIMS_BUCKET key an agent writes to prove it carries ``tag``: only a credential given
    that tag may write it, whatever tags the agent's (self-written) heartbeat names."""
    return f"tagged.{_token(tag, 'tag')}.{_token(agent, 'agent name')}"


def agent_claims_subjects(agent: str, pools: list[str], tags: list[str] | None = None) -> list[str]:
    """The claim keys an agent may write, as KV subjects: its own, its pools', and the proofs of
    its pools and tags (permissions)."""
    prefix = kv_subject_prefix(CLAIMS_BUCKET)
    return [
        f"{prefix}agent.{_token(agent, 'agent name')}.*",
        *(f"{prefix}pool.{_token(pool, 'pool name')}.*" for pool in pools),
        *(f"{prefix}{pool_member_key(pool, agent)}" for pool in pools),
        *(f"{prefix}{tag_member_key(tag, agent)}" for tag in tags or ()),
    ]


def cursor_key(job_key: str) -> str:
    """STATE_BUCKET key of a master-scheduled job's last fired slot."""
    return f"cursor.{job_key}"


def event_subject(agent: str, job: str, state: str) -> str:
    """A run's state change, captured by EVENTS_STREAM."""
    return f"natsched.event.{_token(agent, 'agent name')}.{job}.{state}"


def event_job(subject: str) -> str | None:
    """The job (``<group>.<job>``) an event subject names; None when it is no event subject.

    For skipping events nobody needs before decoding them; whoever acts on one parses it
    (``events.parse_event`` checks the body against the subject)."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != "natsched" or parts[1] != "event":
        return None
    return f"{parts[3]}.{parts[4]}"


def event_state_filter(state: str) -> str:
    """Every agent's and job's events reaching ``state`` (a consumer's filter subject)."""
    return f"natsched.event.*.*.*.{_token(state, 'run state')}"


def log_subject(agent: str, run_id: str) -> str:
    """Output chunks of one run, captured by LOGS_STREAM. The agent is in the subject (and
    each agent may publish only under its own name), so readers take a run's output from
    the agent the run belongs to and no other agent can append to it."""
    return f"natsched.log.{_token(agent, 'agent name')}.{_token(run_id, 'run id')}"


def agent_logs(agent: str) -> str:
    """Every output chunk an agent may publish (its permission)."""
    return f"natsched.log.{_token(agent, 'agent name')}.>"


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{bucket}"


def kv_subject_prefix(bucket: str) -> str:
    """Subject prefix of a KV bucket's keys in its stream."""
    return f"$KV.{bucket}."


def kv_updates(bucket: str) -> str:
    """Every key's updates of a bucket, as a core subscription sees them (natsched web's live view)."""
    return f"{kv_subject_prefix(bucket)}>"
