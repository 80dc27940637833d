"""natsched: a distributed, event-driven job scheduler built on NATS."""

__version__ = "0.1.0"

# The wire protocol version carried as "v" in every payload (see codec.py).
PROTOCOL_VERSION = 1
