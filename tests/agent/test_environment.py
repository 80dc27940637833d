"""Environment building: the agent's variables, the job's overlaid and ``${VAR}``-expanded, extras last."""

from __future__ import annotations

import pytest

from agent.environment import DEFAULT_PATH, build_env, clean_base, expand, expandable

BASE = {"PATH": "/usr/bin:/bin", "HOME": "/home/agent", "HOSTNAME": "db1"}


def test_job_variables_overlay_the_base_and_see_earlier_ones() -> None:
    env, unknown = build_env(
        {"PATH": "/opt/app/bin:${PATH}", "DATA": "${HOME}/data", "BACKUP": "${DATA}/${HOSTNAME}.tar"}, BASE
    )
    assert env == {
        "PATH": "/opt/app/bin:/usr/bin:/bin",
        "HOME": "/home/agent",
        "HOSTNAME": "db1",
        "DATA": "/home/agent/data",
        "BACKUP": "/home/agent/data/db1.tar",
    }
    assert unknown == []


def test_a_variable_sees_only_the_ones_before_it() -> None:
    env, unknown = build_env({"A": "${B}", "B": "b"}, {})
    assert env == {"A": "", "B": "b"} and unknown == ["B"]


def test_unknown_names_expand_to_empty_and_are_reported_once_in_order() -> None:
    env, unknown = build_env({"X": "${NOPE}-${ALSO}-${NOPE}", "Y": "${ALSO}"}, BASE)
    assert env["X"] == "--" and env["Y"] == ""
    assert unknown == ["NOPE", "ALSO"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$$", "$"),
        ("cost: $$5", "cost: $5"),
        ("$$${HOME}", "$/home/agent"),
        ("$${HOME}", "${HOME}"),  # $$ first, so the braces stay literal
        ("$HOME", "$HOME"),  # only the braced form expands
        ("${HOME", "${HOME"),
        ("${1X}", "${1X}"),
        ("a $ b", "a $ b"),
        ("$(whoami) `id` *", "$(whoami) `id` *"),  # never handed to a shell
        ("${HOSTNAME}${HOSTNAME}", "db1db1"),
    ],
)
def test_expansion_rules(value: str, expected: str) -> None:
    assert expand(value, BASE) == expected


def test_extra_goes_last_unexpanded_and_wins() -> None:
    env, unknown = build_env(
        {"NATSCHED_RUN_ID": "forged", "A": "1"},
        BASE,
        {"NATSCHED_RUN_ID": "r-1", "NATSCHED_FILE": "/in/${A}.csv"},
    )
    assert env["NATSCHED_RUN_ID"] == "r-1"
    assert env["NATSCHED_FILE"] == "/in/${A}.csv"
    assert unknown == []


def test_inputs_are_not_modified() -> None:
    base = dict(BASE)
    job = {"HOME": "/srv"}
    env, _ = build_env(job, base)
    assert env["HOME"] == "/srv" and base == BASE and job == {"HOME": "/srv"}


AGENT = {
    "PATH": "/usr/bin",
    "HOME": "/root",
    "LC_TIME": "de_DE.UTF-8",
    "NATS_PASSWORD": "pw",
    "NATSCHED_AGENT_SECRET_KEY_FILE": "/etc/natsched/secret.key",
    "DB_PASSWORD": "db",
    "GITHUB_TOKEN": "gh",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "SSH_AUTH_SOCK": "/tmp/ssh",
    "HTTPS_PROXY": "http://proxy:3128",
}


def test_a_job_gets_only_the_pass_through_variables_and_names_what_else_it_needs() -> None:
    assert clean_base(AGENT) == {"PATH": "/usr/bin", "HOME": "/root", "LC_TIME": "de_DE.UTF-8"}
    assert clean_base({})["PATH"] == DEFAULT_PATH
    visible = expandable(AGENT)
    assert set(visible) >= {"PATH", "HTTPS_PROXY", "HOSTNAME"}
    job = {"PROXY": "${HTTPS_PROXY}"} | {name: f"${{{name}}}" for name in AGENT if name != "HTTPS_PROXY"}
    env, unknown = build_env(job, clean_base(AGENT), visible=visible)
    assert env["PROXY"] == "http://proxy:3128" and "HTTPS_PROXY" not in env
    leaked = [
        value
        for value in ("pw", "db", "gh", "aws", "/tmp/ssh", "/etc/natsched/secret.key")
        if value in env.values()
    ]
    assert leaked == [] and "NATS_PASSWORD" in unknown


def test_a_callers_values_are_taken_as_written_in_the_jobs_place() -> None:
    env, unknown = build_env(
        {"TARGET": "default", "OUT": "/data/${TARGET}"},
        BASE,
        visible={"SECRETISH": "s"},
        literal={"TARGET": "${HOME}$(id)", "EXTRA": "${PATH}"},
    )
    assert env["TARGET"] == "${HOME}$(id)" and env["EXTRA"] == "${PATH}"
    assert env["OUT"] == "/data/${HOME}$(id)"  # the job's own reference sees the caller's value
    assert unknown == []
