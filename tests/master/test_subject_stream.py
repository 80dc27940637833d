"""The subject-trigger stream: pattern matching and overlap, and apply refusing a pattern
that another stream already captures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import api as js_api

from natsched import subjects
from natsched.master.service import MasterService
from natsched.master.subjectstream import patterns_overlap, subject_matches
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, toml_jobs


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("orders.*", "orders.new", True),
        ("orders.*", "orders.new.eu", False),
        ("orders.>", "orders.new.eu", True),
        ("orders.>", "orders", False),
        ("orders.new", "orders.new", True),
        ("*.new", "payments.new", True),
        ("orders.*.eu", "orders.x.us", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("orders.*", "orders.>", True),
        ("orders.*", "orders.new", True),
        ("orders.*", "payments.*", False),
        ("orders", "orders.>", False),
        ("*.new", "orders.*", True),
        ("a.b.c", "a.*", False),
        (">", "anything.at.all", True),
    ],
)
def test_patterns_overlap(a: str, b: str, expected: bool) -> None:
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected


async def test_apply_refuses_a_pattern_that_another_stream_captures(
    master: MasterService, nc: Client
) -> None:
    await nc.jetstream().add_stream(js_api.StreamConfig(name="ORDERS", subjects=["orders.>"]))
    taken = job("on-order", triggers=[{"subject": "orders.*"}])
    reply = await apply(nc, toml_jobs(taken, group="ov"))
    assert not reply["ok"]
    assert "'orders.>' of stream ORDERS" in reply["error"], reply
    listed = await api(nc, subjects.API_JOBS_LIST, {"group": "ov"})
    assert not listed["jobs"], "nothing written"
    free = job("on-payment", triggers=[{"subject": "payments.*"}])
    assert (await apply(nc, toml_jobs(free, group="ov")))["ok"]


async def test_a_pattern_another_stream_captures_is_followed_live(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A job enabled after the operator made an overlapping stream still starts (not durably)."""
    witness = tmp_path / "witness"
    await start_agent("w1")
    on_order = job(
        "on-order",
        enabled=False,
        mode="slave",
        targets={"agents": ["w1"]},
        command=["sh", "-c", f'echo "$NATSCHED_MESSAGE" >> {witness}'],
        triggers=[{"subject": "orders.*"}],
    )
    assert (await apply(nc, toml_jobs(on_order, group="lv")))["ok"]
    await nc.jetstream().add_stream(js_api.StreamConfig(name="ORDERS", subjects=["orders.>"]))
    assert (await api(nc, subjects.API_JOBS_ENABLE, {"jobs": ["lv.on-order"]}))["ok"]

    async def followed() -> bool:
        assert master.inbound is not None
        return "orders.*" in master.inbound._live

    await eventually(followed, 10, "the master follows orders.* live")

    async def ran() -> bool:
        # Followed "live" = a core subscription: a message sent before the server has it is
        # not kept (that is the point of the durable stream), so send until one is taken.
        if not (witness.exists() and "live-1" in witness.read_text()):
            await nc.publish("orders.new", b"live-1")
            await asyncio.sleep(0.3)
        return witness.exists() and "live-1" in witness.read_text()

    await eventually(ran, 10, "the job ran")
