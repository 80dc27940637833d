"""A flood of log-worthy messages writes one line per period, with a count of the rest."""

from __future__ import annotations

import logging

import pytest

from natsched.quietlog import Throttled


def test_one_line_per_kind_and_period_with_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    quiet = Throttled(logging.getLogger("t"), period=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "t"):
        for _ in range(1000):
            quiet.log(logging.INFO, "refused", "trigger %s refused", "x")
        quiet.log(logging.INFO, "other", "something else")
        now[0] = 10.0
        quiet.log(logging.INFO, "refused", "trigger %s refused", "y")
    assert caplog.messages == [
        "trigger x refused",
        "something else",
        "trigger y refused (and 999 more like it not logged)",
    ]
