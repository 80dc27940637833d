"""What a run's process gets: its environment (group's, job's, secrets, NATSCHED_*), its argv
with ``${NAME}`` expanded, its user and working directory.

A dispatched run is prepared while its claim's KV round trip is out (agent/responder.py),
so the agent does this work while it waits instead of after; :class:`Prepared` carries the
outcome (the process, or the reason it cannot start) to the executor's start.
"""

from __future__ import annotations

import logging
import socket
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass

from agent.environment import AgentVariables, build_env, expand_argv
from agent.runner import ProcessSpec
from agent.secretstore import SecretStore
from natsched.errors import SecretError
from natsched.events import RunEvent, RunState, new_run_id
from natsched.groupsettings import GroupSettings
from natsched.models import JobSpec
from natsched.secrets import Masker, references, substitute
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()  # every job gets it as $HOSTNAME
NO_SECRETS = Masker(())  # a masker holds no state: most runs share this one


@dataclass(frozen=True, slots=True)
class Prepared:
    """One run's process and the masker of its secrets, or why it cannot start (``error``)."""

    run_id: str
    process: ProcessSpec | None
    masker: Masker
    error: str = ""


def first_event(
    agent: str,
    spec: JobSpec,
    *,
    trigger: RunTrigger,
    scheduled_at: float | None = None,
    detail: Mapping[str, str] | None = None,
    run_id: str | None = None,
    attempt: int = 1,
) -> RunEvent:
    """A run's first event (queued), before anything is decided about it."""
    return RunEvent(
        run_id=run_id or new_run_id(),
        job=spec.key,
        agent=agent,
        state=RunState.QUEUED,
        trigger=trigger,
        scheduled_at=scheduled_at,
        detail=dict(detail or {}),
        attempt=attempt,
    )


async def prepare_run(
    spec: JobSpec,
    event: RunEvent,
    args: tuple[str, ...],
    trigger_env: Mapping[str, str],
    *,
    agent: str,
    group: GroupSettings | None,
    secrets: SecretStore,
    base: AgentVariables,
    kill_grace: float,
) -> Prepared:
    """:func:`prepare`, with a missing or unreadable secret as the run's failure reason."""
    try:
        process, masker = await prepare(
            spec,
            event,
            args,
            trigger_env,
            agent=agent,
            group=group,
            secrets=secrets,
            base=base,
            kill_grace=kill_grace,
        )
    except SecretError as exc:
        return Prepared(event.run_id, None, NO_SECRETS, str(exc))
    return Prepared(event.run_id, process, masker)


async def prepare(
    spec: JobSpec,
    event: RunEvent,
    args: tuple[str, ...],
    trigger_env: Mapping[str, str],
    *,
    agent: str,
    group: GroupSettings | None,
    secrets: SecretStore,
    base: AgentVariables,
    kill_grace: float,
) -> tuple[ProcessSpec, Masker]:
    """The process to start and the masker of its secrets; SecretError if a secret is missing."""
    extra = {"NATSCHED_RUN_ID": event.run_id, "NATSCHED_JOB": spec.key, "NATSCHED_AGENT": agent}
    extra.update({f"NATSCHED_{k.upper()}": v for k, v in event.detail.items()})
    # The group's replicated settings (natsched/groupsettings.py): its env under the job's
    # own (a job variable of the same name wins), its user and cwd when the job has none.
    # Secrets only from the definition's env (never argv: see natsched/secrets.py); a
    # trigger's env or args are passed as they are.
    job_env = {**(group.env if group else {}), **spec.env}
    masker = NO_SECRETS
    secret_values: list[str] = []
    wanted = references(job_env.values())
    if wanted:
        values = await secrets.resolve(wanted)
        masker = Masker(values.values())
        secret_values = list(values.values())
        job_env = {k: substitute(v, values) for k, v in job_env.items()}
    # HOSTNAME (the host's name) reaches every job; ${NATSCHED_AGENT} & co. may be named.
    visible = ChainMap(extra, base.visible)  # a view, not a copy of the agent's variables per run
    env, unknown = build_env(
        job_env, {**base.base, "HOSTNAME": HOSTNAME}, extra, visible=visible, literal=trigger_env
    )
    command = spec.command
    if not spec.shell:  # with a shell, the shell expands ${NAME} from the environment itself
        command, missing = expand_argv(spec.command, env, visible, hidden=secret_values)
        unknown += [name for name in missing if name not in unknown]
    if unknown:
        log.warning("job %s: undefined variable(s) %s expand to ''", spec.key, ", ".join(sorted(unknown)))
    process = ProcessSpec(
        argv=command + args,  # a caller's args are data: never expanded
        shell=spec.shell,
        env=env,
        cwd=spec.cwd or (group.cwd if group else None),
        user=spec.user or (group.user if group else None),
        timeout=spec.timeout,
        kill_grace=kill_grace,
    )
    return process, masker
