"""The chaos suite: faults at random while jobs fire every second; real executions counted.

Two masters, three agents and one nats-server as real processes; see ``bench/chaos.py`` for
what is done to them and what is counted. The seed is printed (and taken from
``NATSCHED_CHAOS_SEED`` when set), so a failing run can be repeated exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bench.chaos import run_chaos
from bench.chaosledger import COUNTS, print_result

pytestmark = pytest.mark.faults
SECONDS = 30.0  # every fault once; `python -m bench.chaos --seconds 300` for a longer run


@pytest.mark.timeout(240)
async def test_nothing_runs_twice_and_nothing_is_lost_under_faults(tmp_path: Path) -> None:
    seed = int(os.environ.get("NATSCHED_CHAOS_SEED") or random.randrange(1_000_000))
    print(f"chaos seed {seed} (repeat with NATSCHED_CHAOS_SEED={seed})")
    kept = tmp_path / "chaos"
    result = await run_chaos(SECONDS, seed, keep=kept)
    print_result(result)
    counts = {name: result.counts[name] for name in COUNTS}
    if counts != dict.fromkeys(COUNTS, 0):
        # What the services said, for the next person to read beside the missed slots' times.
        said = (kept / "services.log").read_text(errors="replace").splitlines()
        print("\n".join(line for line in said if " WARNING " in line or " ERROR " in line)[-20000:])
    assert result.executions > 0 and result.slots_checked > 0, "the jobs ran and slots were checked"
    assert counts == dict.fromkeys(COUNTS, 0), f"seed {seed}: {result.problems}"
