"""A run that prints without end cannot fill NATSCHED_LOGS: head and tail kept, the cut marked."""

from __future__ import annotations

import json

from nats.aio.client import Client

from agent.output import RunOutput
from natsched.master.service import MasterService
from natsched.models import DEFAULT_OUTPUT_LIMIT
from natsched.secrets import Masker
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, toml_jobs
from tests.security.test_secrets import finals, log_text

LINES = 3_000_000  # seq prints ~21 MB: five times the default limit


async def test_a_flood_of_output_keeps_head_and_tail_within_the_default_limit(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("o1")
    spec = job("flood", mode="slave", targets={"agents": ["o1"]}, command=["seq", str(LINES)])
    assert (await apply(nc, toml_jobs(spec, group="cap")))["ok"]
    reply = json.loads((await nc.request("natsched.trigger.cap.flood", b"{}", timeout=10)).data)
    run_id = reply["runs"][0]["run_id"]

    async def ended() -> bool:
        return bool(await finals(nc, "cap.flood"))

    await eventually(ended, 30, "the flood ended")
    [event] = await finals(nc, "cap.flood")
    full = "".join(f"{i}\n" for i in range(1, LINES + 1)).encode()  # what seq printed
    assert event["state"] == "succeeded" and event["output_bytes"] == len(full)
    stored = (await log_text(nc, run_id, "o1")).encode()
    head, marker, tail = stored.partition(b"\n[natsched: ")
    assert marker, "the cut is marked"
    cut_line, _, tail = tail.partition(b"]\n")
    tail_size = DEFAULT_OUTPUT_LIMIT // 4
    assert head == full[:DEFAULT_OUTPUT_LIMIT] and tail == full[-tail_size:]
    cut = len(full) - DEFAULT_OUTPUT_LIMIT - tail_size
    assert cut_line.startswith(f"{cut} bytes of output cut".encode())
    assert len(stored) < 1.25 * DEFAULT_OUTPUT_LIMIT + 200


class Published:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def __call__(self, run_id: str, chunk: bytes) -> None:
        assert run_id == "r1"
        self.chunks.append(chunk)

    @property
    def text(self) -> bytes:
        return b"".join(self.chunks)


async def test_output_within_the_limit_passes_whole_and_a_per_job_limit_cuts_the_middle() -> None:
    small = Published()
    output = RunOutput("r1", small, Masker(()), 4096)
    for _ in range(5):
        await output.write(b"x" * 1000)
    await output.close()
    assert small.text == b"x" * 5000  # 4096 live, 904 held for the tail, not cut

    big = Published()
    output = RunOutput("r1", big, Masker(["hunter2"]), 4096)
    data = b"".join(b"%05d hunter2\n" % i for i in range(2000))  # 28 KB
    for start in range(0, len(data), 333):  # odd pieces split values across writes
        await output.write(data[start : start + 333])
    await output.close()
    masked = data.replace(b"hunter2", b"***")
    head, _, rest = big.text.partition(b"\n[natsched: ")
    note, _, tail = rest.partition(b"]\n")
    assert head == masked[:4096] and tail == masked[-1024:]
    assert note == b"%d bytes of output cut here (output_limit); the end follows" % (len(masked) - 5120)
    assert all(len(chunk) <= 64 * 1024 for chunk in big.chunks)
