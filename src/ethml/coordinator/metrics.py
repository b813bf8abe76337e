"""The Prometheus metrics of one `ethml serve` instance (served at /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ethml_http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ethml_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.queue = Gauge("ethml_queue_depth", "Jobs and relays waiting", ["queue"], registry=self.registry)
        self.workers = Gauge(
            "ethml_workers_connected", "Workers connected to this instance", ["role"], registry=self.registry
        )
        self.worker_load = Gauge("ethml_worker_load", "Mean load of this instance's workers", registry=self.registry)
        self.cluster_workers = Gauge(
            "ethml_worker_cluster_workers",
            "Dask workers behind each cluster-backed worker of this instance (0: its scheduler does not answer)",
            ["worker", "role"],
            registry=self.registry,
        )
        self.chain_lag = Gauge(
            "ethml_chain_lag_blocks", "Chain head minus the follower's checkpoint", registry=self.registry
        )
        self.jobs = Counter(
            "ethml_jobs_total",
            "Job results and hand-backs by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.artifacts = Gauge(
            "ethml_artifacts",
            "Workers' artifacts in this instance's pending store, by state (pending: waiting for the chain's "
            "decision; unreadable: manifests set aside for the operator, while which no pending block is deleted)",
            ["state"],
            registry=self.registry,
        )
        self.artifacts_settled = Counter(
            "ethml_artifacts_settled_total",
            "Pending artifacts settled by this instance, by outcome (kept: copied into the blockstore; deleted)",
            ["outcome"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "ethml_client_connections_refused_total",
            "Connections closed as they were made: their client had --max-client-connections open already",
            registry=self.registry,
        )
        self.workers_cut = Counter(
            "ethml_workers_disconnected_total",
            "Logged-in workers this instance disconnected, by reason (silent: no load report within the heartbeat "
            "timeout; unstaked: a trainer whose account's stake is gone)",
            ["reason"],
            registry=self.registry,
        )
        self.worker_messages_delayed = Counter(
            "ethml_worker_messages_delayed_total",
            "Workers' messages read late (over their account's message rate), and pings and pongs (over their "
            "connection's)",
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count a request and its latency (the labelled children are looked up once per route and status)."""
        children = self._children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)
