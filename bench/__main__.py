"""Every benchmark in one command: ``python -m bench [--quick]``.

Runs each bench module as its own process, one after the other, each bounded by a
timeout (a bench that overruns is stopped and reported as such), then prints one table of
every figure with natsched's value, the raw floor measured in the same run, the ratio and
the target, and writes ``bench/results/all.json``. ``--quick`` uses shorter runs (for a
smoke test of the benches themselves, not for figures to quote).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, machine

SCALE_QUICK = ["--sizes", "1000", "10000", "--agents", "10", "--changes", "10"]
# (module, result name, full arguments, quick arguments, timeout seconds)
BENCHES: list[tuple[str, str, list[str], list[str], float]] = [
    ("bench.sync_bench", "sync", [], ["--sizes", "10000", "--changes", "100"], 600),
    ("bench.agent_bench", "agent", ["--duration", "60"], ["--duration", "10", "--run-seconds", "3"], 900),
    ("bench.dispatch_bench", "dispatch", [], ["--count", "200", "--seconds", "3"], 300),
    ("bench.master_bench", "master", [], ["--count", "200", "--seconds", "2"], 300),
    ("bench.agentpath_bench", "agentpath", [], ["--count", "200", "--seconds", "2"], 300),
    ("bench.chain_bench", "chain", [], ["--count", "50"], 300),
    ("bench.apply_bench", "apply", [], ["--stored", "10000", "--applies", "50"], 300),
    ("bench.failover_bench", "failover", [], ["--rounds", "2"], 300),
    ("bench.scale_bench", "scale", [], SCALE_QUICK, 1200),
]  # fmt: skip


def main(quick: bool) -> int:
    started_all = time.time()
    benches: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    for module, name, full, short, timeout in BENCHES:
        print(f"== {module} {' '.join(short if quick else full)}", flush=True)
        started = time.time()
        try:
            subprocess.run(
                [sys.executable, "-m", module, *(short if quick else full)], check=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            failed.append(f"{module}: stopped after {timeout:g}s")
            continue
        except subprocess.CalledProcessError as exc:
            failed.append(f"{module}: exit code {exc.returncode}")
            continue
        data = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        if data["time"] < started:
            failed.append(f"{module}: wrote no new results")
            continue
        benches[name] = data["figures"]
    print(f"\nall benchmarks  ({machine()})")
    print(f"{'figure':56} {'natsched':>12} {'raw floor':>30} {'ratio':>7}  target")
    for name, figures in benches.items():
        for f in figures:
            met = "" if f["met"] is None else ("  MET" if f["met"] else "  NOT MET")
            print(
                f"{name + ': ' + f['name']:56} {f['value']:>9.3f} {f['unit']:2} {f['floor_name']:>18} "
                f"{f['floor']:>10.3f} {f['ratio']:>7.2f}  {f['target']}{met}"
            )
    for problem in failed:
        print(f"FAILED {problem}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = Path(RESULTS_DIR / "all.json")
    summary = {"machine": machine(), "started": started_all, "benches": benches, "failed": failed}
    out.write_text(json.dumps(summary, indent=2))
    print(f"written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test, not figures to quote")
    sys.exit(main(parser.parse_args().quick))
