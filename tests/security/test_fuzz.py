"""Fuzz: generated garbage to every natsched subject and into every bucket (issue 15).

Wrong types, huge, deep, NUL, invalid UTF-8 and msgpack junk go to every ``natsched.api.*``
subject, to ``natsched.trigger.*``, to an agent's run/cancel/sync subjects and its pool, and
are written into every KV bucket. Afterwards the master and the agent (real processes) still
answer, nothing ran (the witness file is empty, no run event exists) and the master wrote
nothing in answer to the garbage. The generator is seeded: the seed is printed, and
``NATSCHED_FUZZ_SEED=<seed>`` replays a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.requests import FIELDS
from tests.conftest import Process, eventually
from tests.helpers import api, apply, job, toml_jobs

PER_KIND = 3  # payloads of each kind per subject: ~1,000 messages in all, a few seconds
KV_WRITES = 12  # garbage values per bucket
# Every bucket subjects.py names, so a bucket added later is fuzzed too.
BUCKETS = sorted(value for name, value in vars(subjects).items() if name.endswith("_BUCKET"))
# Keys that mean something to natsched, besides random ones.
MEANINGFUL_KEYS = {
    subjects.JOBS_BUCKET: ["fz.ghost", "fz.witness2"],
    subjects.SETTINGS_BUCKET: ["calendar.c1", "pause.agent.f1", "pause.job.fz.witness"],
    subjects.AGENTS_BUCKET: ["a9", "f2"],
    subjects.STATE_BUCKET: ["cursor.fz.witness", "lock.fz.witness", "lock.fz.ghost"],
    subjects.SECRETS_BUCKET: ["s1"],
    subjects.CHAINS_BUCKET: ["batch.x", "fanin.x", "chain.x"],
}
WATCHED = (
    subjects.JOBS_BUCKET,
    subjects.SETTINGS_BUCKET,
    subjects.SECRETS_BUCKET,
)  # only the API writes these


class Garbage:
    """Seeded generators of hostile payloads."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                r.randint(-(2**70), 2**70),
                r.random() * 1e300,
                "",
                "false",
                "\x00",
                "a\x00b",
                "x" * r.randint(1, 5000),
                "\udcff",  # a lone surrogate: json.dumps escapes it, some decoders choke
                "..*.>",
                "$KV.natsched_jobs.>",
                [],
                {},
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(4) if depth < 4 else 0
        if kind == 0:
            return self.scalar()
        if kind == 1:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def key(self) -> str:
        return self.rng.choice(
            # request fields, and the fields inside their objects (calendars, specs, pauses)
            ["v", "name", "job", "jobs", "agent", "spec", "run_id", "\x00", "k" * 300, "x"]
            + ["dates", "weekdays", "windows", "timezone", "mode", "note", "since", "start", "end"]
            + ["command", "targets", "triggers", "group", "env", "args", "term", "attempt", "detail"]
        )

    def json_object(self, fields: list[str]) -> bytes:
        """A JSON object with the subject's own field names (plus others), of random types."""
        body = {f: self.value() for f in fields if self.rng.random() < 0.7}
        if not body or self.rng.random() < 0.5:
            body[self.key()] = self.value()
        return json.dumps(body).encode()

    def deep(self) -> bytes:
        depth = self.rng.choice([40, 1000, 100_000])
        return self.rng.choice(
            [
                b"[" * depth + b"]" * depth,
                b'{"a":' * depth + b"1" + b"}" * depth,
                b'{"content": ' + b"[" * depth + b"]" * depth + b"}",
                b"\x91" * depth + b"\xc0",  # msgpack: arrays of one, nested
            ]
        )

    def huge(self) -> bytes:
        size = self.rng.choice([70_000, 900_000])
        return self.rng.choice(
            [
                json.dumps({"content": "x" * size, "jobs": ["a"] * 10}).encode(),
                b"7" * size,
                msgpack.packb({"v": 1, "run_id": "r" * size}),
            ]
        )

    def junk(self) -> bytes:
        r = self.rng
        raw = bytes(r.randrange(256) for _ in range(r.randint(1, 200)))
        return r.choice(
            [
                raw,
                b"\xff\xfe\xfd" + raw,  # invalid UTF-8
                b"\x00" * r.randint(1, 100),
                b'{"a": "\xff\xfe"}',
                b'{"a": NaN, "b": Infinity, "c": -Infinity}',
                b'{"a": 1e999}',
                b'{"a": ' + b"9" * 5000 + b"}",
                b'{"a": "\\u0000"}',
                b'{"a": "\\ud800"}',
                b"[1, 2",
                b"null",
                b"[]",
                b'"text"',
                b"42",
            ]
        )

    def msgpack_junk(self) -> bytes:
        r = self.rng
        obj: Any = {self.key(): self.value() for _ in range(r.randint(0, 5))}
        if r.random() < 0.6:
            obj["v"] = r.choice([1, 2, "1", None, 10**20])
        try:
            packed = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogatepass")
        except OverflowError:  # an int over 64 bits: msgpack cannot carry it
            packed = msgpack.packb({"v": 1, "run_id": 2**64 - 1, "spec": -(2**63)})
        return r.choice(
            [
                packed,
                packed[: max(1, len(packed) // 2)],  # truncated
                msgpack.packb({1: 2, (3,): 4}, use_bin_type=True),  # non-string keys
                msgpack.packb(msgpack.ExtType(5, b"\x00" * 20)),
                msgpack.packb({"v": 1, "spec": {"name": self.key()}, "run_id": "r", "term": "x"}),
                msgpack.packb({"v": 1, "run_id": ["x"]}),
            ]
        )

    def payloads(self, fields: list[str]) -> Iterator[bytes]:
        for _ in range(PER_KIND):
            yield self.json_object(fields)
            yield self.deep()
            yield self.junk()
            yield self.msgpack_junk()
        yield self.huge()


def could_start_a_run(payload: bytes) -> bool:
    """A body a trigger rightly accepts (empty, or changing nothing the job forbids): not garbage."""
    try:
        body = json.loads(payload) if payload.strip() else {}
    except (ValueError, RecursionError):
        return False
    harmless = {"v", "correlation_id"}  # and no arguments or variables: the job as defined
    return isinstance(body, dict) and all(
        k in harmless or (k in ("args", "env") and not body[k]) for k in body
    )


async def stream_last_seq(nc: Client, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.last_seq)


async def send_all(nc: Client, targets: dict[str, list[str]], garbage: Garbage) -> list[str]:
    """Every payload to every subject as a request; what went wrong: a request nobody
    answered, or garbage that a trigger accepted."""
    problems: list[str] = []
    for subject, fields in targets.items():
        for payload in garbage.payloads(fields):
            if subject.endswith(".fz.witness") and could_start_a_run(payload):
                continue
            try:
                reply = await nc.request(subject, payload, timeout=5)
            except nats.errors.MaxPayloadError:
                continue
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                problems.append(f"{subject}: {type(exc).__name__} after {payload[:60]!r}")
                continue
            if subject.startswith((subjects.TRIGGER_PREFIX, subjects.API_PREFIX)):
                answer = json.loads(reply.data)
                if subject.startswith(subjects.TRIGGER_PREFIX) and answer.get("ok"):
                    problems.append(f"{subject} accepted {payload[:200]!r}")
                if str(answer.get("error", "")).startswith("internal error"):  # a bug, not a refusal
                    problems.append(f"{subject}: {answer['error'][:200]} after {payload[:200]!r}")
    return problems


async def forge_heartbeats(nc: Client, garbage: Garbage) -> None:
    """f1's real heartbeat under other names, one field of the wrong type each: what a
    hostile or broken agent could write."""
    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
    real = msgpack.unpackb((await kv.get("f1")).value or b"")
    for index, name in enumerate(sorted(real)):
        if name == "v":
            continue
        wrong = garbage.rng.choice(["x", -1, 1e300, None, [1], {"a": [2]}, "\x00", True, "x" * 5000])
        forged = {**real, "agent": f"f{index + 10}", name: wrong}
        await kv.put(f"f{index + 10}", msgpack.packb(forged))


async def write_buckets(nc: Client, garbage: Garbage) -> None:
    js = nc.jetstream()
    for bucket in BUCKETS:
        kv = await js.key_value(bucket)
        keys = MEANINGFUL_KEYS.get(bucket, []) + [
            garbage.rng.choice(["fz", "g", "x-1"]) + "." + str(i) for i in range(KV_WRITES)
        ]
        for key in keys:
            value = garbage.rng.choice([garbage.junk, garbage.msgpack_junk, garbage.deep])()
            try:
                await kv.put(key, value[:500_000])
            except nats.js.errors.BadRequestError as exc:
                # A bucket with a value limit (claims) refuses it: nothing written, as intended.
                if "size exceeds" not in str(exc):
                    raise


async def test_garbage_everywhere_changes_nothing_and_runs_nothing(
    nats_server: EmbeddedServer,
    master_process: Process,
    spawn: Callable[..., Process],
    nc: Client,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("NATSCHED_FUZZ_SEED", time.time_ns() % 2**32))
    print(f"fuzz seed: {seed} (replay with NATSCHED_FUZZ_SEED={seed})")
    garbage = Garbage(seed)
    witness = tmp_path / "witness"
    line = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}'
    witness_job = job("witness", mode="slave", targets={"agents": ["f1"]}, command=line, shell=True)
    mirror_job = job("tick", targets={"agents": ["f1"]}, command=line, shell=True, enabled=False)
    pool_job = job("pooled", mode="load-balance", targets={"pools": ["p"]}, command=line, shell=True)
    assert (await apply(nc, toml_jobs(witness_job, mirror_job, pool_job, group="fz")))["ok"]
    agent = spawn(
        "natsched-agent",
        "--name",
        "f1",
        "--pool",
        "p",
        "--state-dir",
        str(tmp_path / "f1"),
        url=nats_server.url,
    )

    async def agent_answers() -> bool:
        try:
            reply = await nc.request(subjects.agent_sync_subject("f1"), b"", timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        return bool(json.loads(reply.data).get("agent") == "f1")

    await eventually(agent_answers, 20, "agent f1 answers")

    await write_buckets(nc, garbage)
    await forge_heartbeats(nc, garbage)
    targets: dict[str, list[str]] = {subject: sorted(fields) for subject, fields in FIELDS.items()}
    targets.update(
        {
            f"{subjects.API_PREFIX}.nope": ["x"],
            f"{subjects.TRIGGER_PREFIX}.fz.witness": ["args", "env", "correlation_id"],
            f"{subjects.TRIGGER_PREFIX}.nope": ["args"],
            f"{subjects.TRIGGER_PREFIX}.fz.{'y' * 3000}": ["args"],
            subjects.agent_run_subject("f1"): ["spec", "run_id", "term", "args", "env"],
            subjects.agent_cancel_subject("f1"): ["run_id"],
            subjects.agent_sync_subject("f1"): [],
            subjects.pool_run_subject("p"): ["spec", "run_id"],
            subjects.MASTERS_STATUS: [],
            subjects.lock_subject("f1"): ["job", "run_id", "lock", "release"],
        }
    )
    await asyncio.sleep(0.5)  # the services take the bucket garbage in
    before = {b: await stream_last_seq(nc, subjects.kv_stream(b)) for b in WATCHED}
    problems = await send_all(nc, targets, garbage)
    await asyncio.sleep(1.0)  # anything started by mistake has time to show

    context = f"seed {seed}"
    assert not problems, (context, problems[:10])
    assert master_process.popen.poll() is None, (context, master_process.output()[-3000:])
    assert agent.popen.poll() is None, (context, agent.output()[-3000:])
    assert (await api(nc, subjects.API_PING, {}))["ok"], context
    assert (await api(nc, subjects.API_JOBS_LIST, {}))["ok"], context
    assert await agent_answers(), context
    assert not witness.exists(), (context, witness.read_text())
    assert await stream_last_seq(nc, subjects.EVENTS_STREAM) == 0, f"{context}: a run event was published"
    after = {b: await stream_last_seq(nc, subjects.kv_stream(b)) for b in WATCHED}
    assert after == before, f"{context}: the master wrote in answer to garbage"
    for process in (master_process, agent):
        assert "Traceback" not in process.output(), (context, process.output()[-3000:])

    # Still working end to end: a real trigger runs the job once, on f1.
    reply = json.loads((await nc.request(f"{subjects.TRIGGER_PREFIX}.fz.witness", b"{}", timeout=10)).data)
    assert reply["ok"], (context, reply)
    run_id = reply["runs"][0]["run_id"]

    async def witnessed() -> bool:
        return witness.exists() and witness.read_text().endswith("\n")

    await eventually(witnessed, 10, "the witness job ran")
    assert witness.read_text().split() == [run_id, "f1"], context
    # The pool's job goes to f1, the only live agent, past the forged heartbeats.
    reply = json.loads((await nc.request(f"{subjects.TRIGGER_PREFIX}.fz.pooled", b"{}", timeout=10)).data)
    assert reply["ok"] and reply["runs"][0]["agent"] == "f1", (context, reply)
    pooled = reply["runs"][0]["run_id"]

    async def both() -> bool:
        return witness.read_text().count("\n") == 2

    await eventually(both, 10, "the pool's job ran")
    assert witness.read_text().split()[2:] == [pooled, "f1"], context
