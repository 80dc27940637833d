"""Pure trigger functions: given a trigger and an instant, when does it fire next?

No I/O, no sleeping, no global clock: callers pass ``after`` explicitly, so DST,
misfire and catch-up are plain unit tests.
"""
