"""The leader's loop: the event follower and the deadline keeper run on one instance at a time, the
one holding the `leader` lease (renewed every pass and while it runs; another instance takes over within its
ttl of a holder's death). A leader that loses the lease mid-pass (it stalled past the ttl, and another
instance leads now) stops the pass there."""

from __future__ import annotations

import structlog

from ethml.coordinator.chain import Chain
from ethml.coordinator.follower import follow
from ethml.coordinator.keeper import keep_deadlines
from ethml.coordinator.lease import LeaseLapsed, Lock
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.store import Store

log = structlog.get_logger("ethml.coordinator")


class Leader:
    def __init__(self, chain: Chain, store: Store, metrics: Metrics) -> None:
        self.chain, self.store, self.metrics = chain, store, metrics
        self.lease = Lock(store, "leader", ttl=10)

    async def step(self) -> None:
        if not await self.lease.acquire(wait=0):
            return
        # Renewed while the pass runs: the keeper waits for a receipt per transaction, a block or more, and
        # a lease that lapsed meanwhile would let a second instance follow and keep at the same time.
        try:
            async with self.lease.renewing():
                checkpoint = await follow(self.chain, self.store, self.chain.confirmations)
                if self.chain.head is not None:
                    self.metrics.chain_lag.set(max(0, self.chain.head - checkpoint))
                await keep_deadlines(self.chain, self.store)
        except LeaseLapsed as exc:
            log.warning("leader_pass_cut_short", error=f"the leader lease was {exc}")
