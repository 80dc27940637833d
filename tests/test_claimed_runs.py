"""A claim names the run it is for (``natsched/claims.py``): the lost pass's last record of a
run whose agent died before its first event was out. Agents write claims, so what a claim says
of its run is checked, and a claim must fit the bucket's value limit whatever the run carries."""

from __future__ import annotations

from natsched import codec, subjects
from natsched.buckets import CLAIM_MAX_VALUE
from natsched.claims import MAX_CARRIED, Claim, ClaimedRun, decode_claim, encode_claim


def test_a_claim_carries_its_run_and_the_chain_detail_only() -> None:
    run = ClaimedRun.of(
        "g.job", "cron", 1700000000.0, 2, {"chain_id": "c1", "parents": "p1,p2", "file": "/x"}
    )
    decoded = decode_claim(encode_claim(Claim(agent="a1", nonce="n", run=run)), "agent.a1.r1")
    assert decoded.run == run
    assert dict(decoded.run.detail) == {"chain_id": "c1", "parents": "p1,p2"}


def test_the_longest_claim_fits_the_bucket_and_a_long_parents_list_is_dropped() -> None:
    longest = "a" * subjects.MAX_NAME_LENGTH
    detail = {"chain_id": "c" * 64, "parents": ",".join(["p" * 24] * 500)}
    run = ClaimedRun.of(f"{longest}.{longest}", "manual", 1.5, 10**6, detail)
    assert dict(run.detail) == {"chain_id": "c" * 64}
    fitting = ClaimedRun.of(
        f"{longest}.{longest}",
        "manual",
        1.5,
        10**6,
        {"chain_id": "c" * 64, "parents": "p" * (MAX_CARRIED - 64)},
    )
    assert len(fitting.detail["parents"]) == MAX_CARRIED - 64
    assert (
        len(encode_claim(Claim(agent=longest, master=longest, nonce="f" * 16, run=fitting))) < CLAIM_MAX_VALUE
    )


def test_a_claim_naming_a_garbage_run_still_decides_who_runs_it() -> None:
    for garbage in (
        {"job": "no-group", "trigger": "manual", "attempt": 1, "detail": {}, "at": 1.0},
        {"job": "g.job", "trigger": "manual", "attempt": True, "detail": {}, "at": 1.0},
        {"job": "g.job", "trigger": "manual", "attempt": 1, "detail": [], "at": 1.0},
        {"job": "g.job", "trigger": "manual", "attempt": 1, "detail": {}, "at": "now"},
        {"job": "g.job.x y", "trigger": "manual", "attempt": 1, "detail": {}, "at": 1.0},
        "g.job",
    ):
        data = codec.pack({"agent": "a1", "master": "", "nonce": "n", "run": garbage})
        claim = decode_claim(data, "agent.a1.r1")
        assert claim.agent == "a1" and claim.run is None, garbage
