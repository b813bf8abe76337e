"""The observer's loop, on every instance: the chain head, queue depths and worker gauges for
/metrics, a sample of queue and load for the dashboard's plot every 10 s, and the disconnection of
workers that stopped heartbeating (their jobs then time out and go to others)."""

from __future__ import annotations

import time

import structlog

from ethml.coordinator.chain import Chain
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.schemas import ROLES
from ethml.coordinator.store import Store

log = structlog.get_logger("ethml.coordinator")


class Observer:
    def __init__(
        self, chain: Chain, store: Store, dispatcher: Dispatcher, metrics: Metrics, heartbeat_timeout: float
    ) -> None:
        self.chain, self.store, self.dispatcher, self.metrics = chain, store, dispatcher, metrics
        self.heartbeat_timeout = heartbeat_timeout
        self.last_sample = 0.0

    async def step(self) -> None:
        self.drop_silent()  # first: a chain node or Redis that is down does not keep silent workers connected
        self.chain.head = int(await self.chain.w3.eth.block_number)
        depth = await self.store.queue_depth()
        for name, value in depth.items():
            self.metrics.queue.labels(name).set(value)
        conns = list(self.dispatcher.conns.values())
        for role in ROLES:
            self.metrics.workers.labels(role).set(sum(1 for c in conns if c.role == role))
        self.metrics.worker_load.set(sum(c.load for c in conns) / len(conns) if conns else 0.0)
        self.metrics.cluster_workers.clear()  # only the workers connected now
        for c in conns:
            if c.cluster is not None:
                self.metrics.cluster_workers.labels(c.consumer, c.role).set(c.cluster["workers"])
        now = time.time()
        if now - self.last_sample >= 10:
            self.last_sample = now
            workers = await self.store.workers()
            await self.store.add_sample(
                {
                    "t": now,
                    "queue": depth["trainer"] + depth["validator"],
                    "load": sum(w["load"] for w in workers) / len(workers) if workers else 0.0,
                    "workers": len(workers),
                }
            )

    def drop_silent(self) -> None:
        """Disconnect the workers that sent no load report (their heartbeat) within the heartbeat timeout, not
        counting the time this server spent on their messages (their socket may linger); their jobs time out and go
        to others."""
        now = time.monotonic()
        for conn in list(self.dispatcher.conns.values()):
            if conn.silent_for(now) > self.heartbeat_timeout:
                log.warning("worker_silent", worker=conn.consumer)
                self.metrics.workers_cut.labels("silent").inc()
                conn.post_close(4002, b"no heartbeat")  # not waited for: one that stalls holds up only itself
