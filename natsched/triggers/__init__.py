"""Pure trigger functions (no I/O, no clock): ``fire.next_fire``, ``fire.previous_fires``,
``misfire.due_slots``, and the cron and interval arithmetic behind them.

This package's ``__init__`` imports nothing, so ``models`` can use ``triggers.cron`` for
validation while ``triggers.fire`` uses ``models``.
"""
