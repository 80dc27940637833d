"""Attack: an agent fills the run-claims bucket, which agents write themselves.

Agents write their own claim keys (``agent.<agent>.<run_id>``) straight into
``natsched_claims``, and a key stays 24 h: a1 could store values as big as the server's
``max_payload`` (1 MB) under as many run ids as it liked, filling the JetStream storage every
other bucket and stream shares. A claim is a few dozen bytes: the bucket takes no value over
``CLAIM_MAX_VALUE``.
"""

from __future__ import annotations

import pytest
from nats.js import api

from natsched import codec, subjects
from natsched.buckets import CLAIM_MAX_VALUE, ensure_all
from natsched.claims import claim, open_claims
from natsched.events import new_run_id
from tests.security.hostile import Secured


async def test_an_agent_cannot_store_big_values_in_the_claims_bucket(secured: Secured) -> None:
    master = await secured.connect("natsched-master")
    # The bucket as an earlier version created it (no limit): a master's start applies it.
    await master.jetstream().create_key_value(api.KeyValueConfig(bucket=subjects.CLAIMS_BUCKET, history=1))
    await ensure_all(master.jetstream())
    a1 = await secured.connect("agent-a1")
    claims = await open_claims(a1.jetstream())
    with pytest.raises(Exception, match="(?i)maximum|size"):
        await claims.put(subjects.agent_claim_key("a1", new_run_id()), b"x" * 100_000)
    # A real claim, the longest names included, and a membership proof still fit.
    longest = "a" * subjects.MAX_NAME_LENGTH
    result = await claim(claims, subjects.agent_claim_key("a1", new_run_id()), agent=longest, master=longest)
    assert result.won
    assert len(codec.pack({"agent": longest, "master": longest, "nonce": "f" * 16})) < CLAIM_MAX_VALUE
