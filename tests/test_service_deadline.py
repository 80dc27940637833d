"""A service stops within seconds of SIGTERM even when its shutdown hangs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from natsched.service import SHUTDOWN_DEADLINE

# A service whose stop() never returns and ignores cancellation, as a nats-py call that
# swallowed its cancellation would: the deadline is all that ends the process.
HANGING = """
import asyncio, logging, sys
from natsched.service import Service, serve

class Hanging(Service):
    async def stop(self):
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
print("serving", flush=True)
asyncio.run(serve(Hanging()))
"""


def test_a_service_whose_shutdown_hangs_still_exits_after_the_deadline() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", HANGING], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "serving"
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = process.wait(SHUTDOWN_DEADLINE + 10)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    _, err = process.communicate()
    assert code == 1, err
    assert took < SHUTDOWN_DEADLINE + 5, took
    assert "did not stop within" in err and "Traceback" not in err, err
