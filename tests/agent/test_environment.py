"""Environment building: the agent's variables, the job's overlaid and ``${VAR}``-expanded, extras last."""

from __future__ import annotations

import pytest

from agent.environment import build_env, expand

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
