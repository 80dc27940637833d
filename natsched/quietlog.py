"""Log lines that a sender can cause, at most one per kind and period.

A flood of bad messages (refused triggers, malformed lock requests, messages dropped by a
full subscription) wrote one line each: ~200k lines in 10 s from one publisher, the disk
and the event loop paying for every one. The first line of each period is logged; the rest
are counted and the count rides on the next line that is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PERIOD = 10.0
MAX_KINDS = 256  # kinds are ours (a few per service); the cap only bounds a caller's mistake


class Throttled:
    def __init__(
        self, logger: logging.Logger, period: float = PERIOD, clock: Callable[[], float] = time.monotonic
    ):
        self._log = logger
        self._period = period
        self._clock = clock
        self._kinds: dict[str, list[float]] = {}  # kind -> [end of its period, lines held back]

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        state = self._kinds.get(kind)
        if state is not None and now < state[0]:
            state[1] += 1
            return
        held = int(state[1]) if state is not None else 0
        if state is None and len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = [now + self._period, 0]
        if held:
            message += " (and %d more like it not logged)"
            args = (*args, held)
        self._log.log(level, message, *args)
