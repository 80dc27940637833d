"""The guardian process (see ``agent/guardian.py``): kills the registered process groups
when the agent's end of the pipe closes. Standard library only: it runs with ``-I -S``."""

import contextlib
import os
import signal
import sys


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the agent's end (EOF) ends the guardian
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line.startswith(b"+"):
            groups.add(pgid)
        else:
            groups.discard(pgid)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
