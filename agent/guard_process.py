"""The guardian process (see ``agent/guardian.py``): when the agent's end of the pipe closes,
kills the process groups in the registry (the descriptor named by its one argument).
Standard library only: it runs with ``-I -S``."""

import contextlib
import os
import signal
import struct
import sys

SLOT = struct.Struct("<ii")  # pgid, ~pgid: as agent/guardian.py writes them


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the agent's end (EOF) ends the guardian
    registry = int(sys.argv[1])
    while sys.stdin.buffer.read(4096):
        pass  # the agent writes nothing: end-of-file is its end (a clean close, or its death)
    data = os.pread(registry, os.fstat(registry).st_size, 0)
    for pgid, check in SLOT.iter_unpack(data[: len(data) - len(data) % SLOT.size]):
        if pgid > 1 and check == ~pgid:  # a half-written slot, or a free one, names no group
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
