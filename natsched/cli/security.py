"""``natsched tls init`` and ``natsched permissions``: material for the configs in nats/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from natsched import passwords, security, tls
from natsched.cli.common import console, err_console, fail
from natsched.errors import ConfigError
from natsched.subjects import is_token

tls_app = typer.Typer(help="TLS material for nats-server and natsched.", no_args_is_help=True)


@tls_app.command("init")
def tls_init(
    directory: Annotated[Path, typer.Argument(help="where to write ca.pem, server*.pem, client*.pem")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="server DNS name or IP (repeatable)")
    ] = None,
    identity: Annotated[
        list[str] | None,
        typer.Option(
            "--identity",
            help="a client certificate per identity (master, admin, trigger, agent names); "
            "with verify_and_map the certificate is the user",
        ),
    ] = None,
    map_users: Annotated[bool, typer.Option("--map-users", help="print a verify_and_map tls block")] = False,
) -> None:
    """Create a private CA, a server certificate for the hosts and client certificates."""
    hosts = host or ["localhost", "127.0.0.1"]
    for name in identity or []:
        if not is_token(name):
            raise fail(f"--identity {name!r}: letters, digits, '_' and '-' only")
    paths = tls.generate(directory, hosts, identities=identity or [])
    for kind, path in paths.items():
        console.print(f"{kind:11} {path}", highlight=False)
    console.print(
        "\nnats-server tls block (tls.conf):\n" + tls.server_tls_block(paths, map_users=map_users),
        highlight=False,
    )
    console.print(
        "cluster routes tls block (cluster-tls.conf, for nats/cluster/):\n" + tls.route_tls_block(paths),
        highlight=False,
    )


def _agent_spec(value: str) -> tuple[str, list[str]]:
    name, _, pools = value.partition(":")
    pool_list = [p for p in pools.split(",") if p]
    if not is_token(name) or not all(is_token(p) for p in pool_list):
        raise ConfigError(f"--agent {value!r}: use NAME or NAME:pool1,pool2 (letters, digits, '_', '-')")
    return name, pool_list


def _agent_tags(values: list[str], agents: list[str]) -> dict[str, list[str]]:
    """``--agent-tags NAME:tag1,tag2`` options, each naming an agent given with ``--agent``."""
    tags: dict[str, list[str]] = {}
    for value in values:
        name, _, listed = value.partition(":")
        names = [t for t in listed.split(",") if t]
        if not is_token(name) or not names or not all(is_token(t) for t in names):
            raise ConfigError(f"--agent-tags {value!r}: use NAME:tag1,tag2 (letters, digits, '_', '-')")
        if name not in agents:
            raise ConfigError(f"--agent-tags {value!r}: agent {name!r} is not given with --agent")
        tags.setdefault(name, []).extend(names)
    return tags


def permissions(
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="NAME or NAME:pool1,pool2 (repeatable)")
    ] = None,
    agent_tags: Annotated[
        list[str] | None,
        typer.Option(
            "--agent-tags",
            help="NAME:tag1,tag2: tags the agent may prove; masters count no other tag of its "
            "heartbeat (repeatable)",
        ),
    ] = None,
    trigger_job: Annotated[
        list[str] | None,
        typer.Option("--trigger-job", help="<group>.<job> the trigger user may start (repeatable)"),
    ] = None,
    credentials_dir: Annotated[
        Path,
        typer.Option(
            "--credentials-dir",
            help="each user's generated password: <user>.env (mode 0600); an existing file is kept",
        ),
    ] = Path("natsched-credentials"),
    certs: Annotated[
        bool,
        typer.Option(
            "--certs", help="users mapped from client certificates (tls verify_and_map), no passwords"
        ),
    ] = False,
    notify_subject: Annotated[
        list[str] | None,
        typer.Option(
            "--notify-subject",
            help="subject or pattern of your own where masters (notify.subject) and agents "
            "(sync_notify) may publish notifications (repeatable)",
        ),
    ] = None,
    trigger_subject: Annotated[
        list[str] | None,
        typer.Option(
            "--trigger-subject",
            help="subject-trigger pattern masters may follow live, when it overlaps a stream of "
            "yours (repeatable)",
        ),
    ] = None,
) -> None:
    """Print the nats-server authorization block: master, admin, web, one user per agent, trigger.

    Each user gets its own generated password, also written to <credentials-dir>/<user>.env.
    """
    notify = notify_subject or []
    try:
        roles: dict[str, security.Permissions] = {
            "natsched-master": security.master(notify, trigger_subject or []),
            "natsched-admin": security.admin(),
            "natsched-web": security.web(),  # natsched web, read-only
        }
        agents = [_agent_spec(value) for value in agent or []]
        tags = _agent_tags(agent_tags or [], [name for name, _ in agents])
        for name, pools in agents:
            roles[f"agent-{name}"] = security.agent(name, pools, notify, tags.get(name, []))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if trigger_job:
        roles["natsched-trigger"] = security.trigger(trigger_job)
    if certs:  # the identity names natsched tls init --identity gave the certificates
        mapped = {u.removeprefix("natsched-").removeprefix("agent-"): perms for u, perms in roles.items()}
        print(security.cert_users_block(mapped), end="")
        return
    try:
        found, created = passwords.ensure_credentials(credentials_dir, list(roles))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    print(security.users_block({user: (found[user], perms) for user, perms in roles.items()}), end="")
    err_console.print(
        f"a distinct password per user, in {credentials_dir}/<user>.env (mode 0600; "
        f"new: {', '.join(p.name for p in created) or 'none'}, the others kept); give each service "
        "only its own file (systemd EnvironmentFile=). The block above holds them all: keep that "
        "file mode 0600, readable by nats-server only.",
        highlight=False,
        markup=False,
    )
