"""Revealer: the second phase of a round. Reveals the journaled prediction and salt once five
commitments are in, retrying until the reveal window closes, and closes a round whose window passed
without all five reveals."""

from __future__ import annotations

import asyncio

from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import NodeWarning
from ethml.node.sender import TxSender

#: Reverts that mean "not yet": the reveal is tried again.
_NOT_YET = ("NotRevealPhase",)


class Revealer:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[tuple[int, int]], sender: TxSender) -> None:
        self.ctx = ctx
        self.inq = inq
        self.sender = sender

    async def run(self) -> None:
        while True:
            request_id, deadline = await self.inq.get()
            if request_id in self.ctx.closed_requests:
                continue
            await self.reveal(request_id, deadline)

    async def reveal(self, request_id: int, deadline: int) -> None:
        secret = self.ctx.journal.latest_secret(request_id)
        if secret is None:
            return  # this node did not commit in this round
        commit = self.ctx.journal.get(request_id, secret.challenge, "commit")
        if commit is None or commit.status in ("reverted", "dropped"):
            return
        args = [request_id, secret.prediction, secret.salt]
        backoff = 0.25
        while True:
            outcome = await self.sender.send(request_id, secret.challenge, "reveal", args)
            if outcome.status != "dropped" or not any(r in outcome.reason for r in _NOT_YET):
                break
            # Our commitment is not mined yet, or the chain has not reached the reveal phase.
            if await self.ctx.sleep(backoff) or request_id in self.ctx.closed_requests:
                return
            backoff = min(backoff * 2, 2.0)
        if outcome.status == "dropped":
            if request_id not in self.ctx.closed_requests and "AlreadyRevealed" not in outcome.reason:
                self.sender.dropped(request_id, f"reveal: {outcome.reason}")
            return
        if outcome.status == "mined":
            self.ctx.log.info("revealed", request_id=request_id, prediction=secret.prediction)
            await self._close_after(request_id, secret.challenge, deadline)
            await self._claim_if_due(request_id, secret.challenge)

    async def _claim_if_due(self, request_id: int, challenge: str) -> None:
        """Claim the accrued rewards once they reach the node's threshold (one claim per round at most)."""
        threshold = self.ctx.config.claim_threshold
        if threshold is None or request_id not in self.ctx.closed_requests:
            return
        base, tips = await self.ctx.contract.functions.owedRewards(self.ctx.address).call()
        owed = int(base) + int(tips)
        if owed == 0 or owed < threshold:
            return
        outcome = await self.sender.send(request_id, challenge, "claim", [])
        if outcome.status == "mined":
            self.ctx.log.info("rewards_claimed", amount=owed)

    async def _close_after(self, request_id: int, challenge: str, deadline: int) -> None:
        """Close the round once the reveal window has passed, unless the fifth reveal closed it."""
        while request_id not in self.ctx.closed_requests:
            try:
                latest: int = await self.ctx.w3.eth.block_number
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                latest = -1
            if latest > deadline:
                outcome = await self.sender.send(request_id, challenge, "close", [request_id])
                if outcome.status == "mined":
                    self.ctx.emit(NodeWarning(f"request {request_id}: closed after its reveal window"))
                return
            if await self.ctx.sleep(self.ctx.config.poll_interval):
                return
