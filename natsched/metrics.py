"""Prometheus metrics for masters and agents (optional: ``--metrics-port``).

Each service owns a ``Metrics`` with its own registry (several services in one process, as
in tests, do not collide). The HTTP endpoint runs in prometheus-client's thread; updating a
metric is a few nanoseconds of in-memory work, so nothing here can slow or fail a run.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "natsched_runs", "Run state changes recorded, by state", ["state"], registry=self.registry
        )
        self.lateness = Histogram(
            "natsched_schedule_lateness_seconds",
            "Scheduled slot to dispatch (master) or launch (agent)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dispatch = Histogram(
            "natsched_dispatch_seconds",
            "Master: dispatch of one job (request to replies)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.heartbeat_age = Gauge(
            "natsched_agent_heartbeat_age_seconds",
            "Master: seconds since each agent's last heartbeat",
            ["agent"],
            registry=self.registry,
        )
        self.cache_jobs = Gauge(
            "natsched_cache_jobs", "Agent: job definitions in its cache", registry=self.registry
        )
        self.sync_lag = Gauge(
            "natsched_sync_lag_seconds",
            "Agent: seconds since its cache last caught up",
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "natsched_outbox_depth", "Agent: events waiting to be published", registry=self.registry
        )
        self.up = Gauge("natsched_up", "1 while the service runs", ["role"], registry=self.registry)
        self.up.labels(role=role).set(1)
        self._server: WSGIServer | None = None

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other hosts
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
