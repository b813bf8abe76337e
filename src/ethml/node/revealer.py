"""Revealer: the second phase of a round and its close.

Once five commitments are in, it reveals the journaled answer vector and salt (never anything else),
retrying until the reveal window closes. When the four others have revealed already, its reveal also
closes the round (`revealAndClose`, carrying their vectors from the `Revealed` events). The node whose
reveal was the fifth closes a round that is still open (`closeRound`); any node closes one whose reveal
window passed without all five reveals. Past its threshold it takes its balance out of the oracle, keeping
a few bonds there. Like every actor, it waits out a lost RPC connection instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from ethml.chain.rounds import MINERS_PER_ROUND, answer_table
from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import NodeWarning
from ethml.node.journal import Secret
from ethml.node.sender import Outcome, TxSender

#: Reverts that mean "not yet": the reveal is tried again.
_NOT_YET = ("NotRevealPhase",)
#: Reverts that mean someone else got there first: nothing to report.
_TOO_LATE = ("AlreadyRevealed", "NoOpenRound", "NotCurrentRound")

T = TypeVar("T")


class Revealer:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[tuple[int, int]], sender: TxSender) -> None:
        self.ctx = ctx
        self.inq = inq
        self.sender = sender

    async def run(self) -> None:
        while True:
            item = await self.ctx.next(self.inq)
            if item is None:
                return
            round_id, deadline = item
            if round_id in self.ctx.closed_rounds:
                continue
            await self.reveal(round_id, deadline)

    async def _rpc(self, call: Awaitable[T]) -> T | None:
        """An RPC read that answers None instead of raising when the connection is lost."""
        try:
            return await call
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self.ctx.emit(NodeWarning(f"RPC unreachable ({type(exc).__name__}); will retry"))
            return None

    async def reveal(self, round_id: int, deadline: int) -> None:
        secret = self.ctx.journal.latest_secret(round_id)
        if secret is None:
            return  # this node did not commit in this round
        commit = self.ctx.journal.get(round_id, secret.challenge, "commit")
        if commit is None or commit.status in ("reverted", "dropped"):
            return
        backoff = 0.25
        while True:
            outcome = await self._send_reveal(round_id, secret)
            if outcome.status != "dropped" or not any(r in outcome.reason for r in _NOT_YET):
                break
            # Our commitment is not mined yet, or the chain has not reached the reveal phase.
            if await self.ctx.sleep(backoff) or round_id in self.ctx.closed_rounds:
                return
            backoff = min(backoff * 2, 2.0)
        if outcome.status == "dropped":
            if round_id not in self.ctx.closed_rounds and not any(r in outcome.reason for r in _TOO_LATE):
                self.sender.dropped(round_id, f"reveal: {outcome.reason}")
            return
        if outcome.status == "mined":
            self.ctx.log.info("revealed", round_id=round_id, answers=secret.answers)
            await self._close(round_id, secret.challenge, deadline)
            await self._claim_if_due(round_id, secret.challenge)

    async def _send_reveal(self, round_id: int, secret: Secret) -> Outcome:
        """A plain reveal, or, when the four others have revealed, the reveal that closes the round."""
        kind = "reveal"
        if self.ctx.journal.has(round_id, secret.challenge, "reveal_close"):
            kind = "reveal_close"  # sent before a restart: finish that one
        elif not self.ctx.journal.has(round_id, secret.challenge, "reveal"):
            revealed = await self._rpc(self._revealed(round_id))
            if revealed is not None and len(revealed[1]) == MINERS_PER_ROUND - 1:
                kind = "reveal_close"
        if kind == "reveal":
            return await self.sender.send(round_id, secret.challenge, "reveal", [round_id, secret.answers, secret.salt])
        table = await self._table(round_id, {self.ctx.address: secret.answers})
        if table is None:
            return Outcome("dropped", "NotRevealPhase: the round's table is not readable yet")
        miners, answers = table
        return await self.sender.send(
            round_id, secret.challenge, "reveal_close", [round_id, secret.salt, miners, answers]
        )

    async def _revealed(self, round_id: int) -> tuple[dict[int, str], dict[str, list[int]]]:
        """The round's commitment slots (slot -> miner) and revealed vectors (miner -> answers), from its
        Committed and Revealed events."""
        events = self.ctx.contract.events
        start = self.ctx.deployment.block
        committed = await events.Committed().get_logs(argument_filters={"roundId": round_id}, from_block=start)
        revealed = await events.Revealed().get_logs(argument_filters={"roundId": round_id}, from_block=start)
        slots = {int(e["args"]["index"]): str(e["args"]["miner"]) for e in committed}
        vectors = {str(e["args"]["miner"]): [int(a) for a in e["args"]["answers"]] for e in revealed}
        return slots, vectors

    async def _table(self, round_id: int, own: dict[str, list[int]]) -> tuple[list[str], list[int]] | None:
        """The closing transaction's revealers and answer table (with `own` vector added), or None."""
        read = await self._rpc(self._revealed(round_id))
        if read is None:
            return None
        slots, vectors = read
        vectors.update(own)
        count = len(next(iter(vectors.values()))) if vectors else 0
        if count == 0:
            current = await self._rpc(self.ctx.contract.functions.getCurrentRound().call())
            if current is None or int(current[0]) != round_id:
                return None
            count = len(current[9])
        return answer_table(slots, vectors, count)

    async def _close(self, round_id: int, challenge: str, deadline: int) -> None:
        """Close the round unless it closed already: at once when this node's reveal was the fifth (all
        five are in), else once the reveal window has passed. Returns once the watcher has seen it closed."""
        while round_id not in self.ctx.closed_rounds:
            current = await self._rpc(self.ctx.contract.functions.getCurrentRound().call())
            latest = await self._rpc(self.ctx.w3.eth.block_number)
            if current is not None and latest is not None and int(current[0]) == round_id:
                everyone = int(current[5]) == (1 << MINERS_PER_ROUND) - 1
                if (everyone and await self._was_last(round_id)) or latest > deadline:
                    table = await self._table(round_id, {})
                    if table is not None:
                        outcome = await self.sender.send(round_id, challenge, "close", [round_id, *table])
                        if outcome.status != "mined":
                            return
                        if not everyone:
                            self.ctx.emit(NodeWarning(f"round {round_id}: closed after its reveal window"))
            if await self.ctx.sleep(self.ctx.config.poll_interval):
                return

    async def _was_last(self, round_id: int) -> bool:
        """Whether this node's reveal was the round's last (so it, and no other node, closes at once)."""
        logs = await self._rpc(
            self.ctx.contract.events.Revealed().get_logs(
                argument_filters={"roundId": round_id}, from_block=self.ctx.deployment.block
            )
        )
        if not logs:
            return False
        last: Any = max(logs, key=lambda e: (e["blockNumber"], e["logIndex"]))
        return str(last["args"]["miner"]).lower() == self.ctx.address.lower()

    async def _claim_if_due(self, round_id: int, challenge: str) -> None:
        """Past the threshold, take the balance out of the oracle, keeping `bonds_kept` bonds there."""
        threshold = self.ctx.config.claim_threshold
        if threshold is None or round_id not in self.ctx.closed_rounds:
            return
        balance = await self._rpc(self.ctx.contract.functions.minerBalance(self.ctx.address).call())
        params = await self._rpc(self.ctx.contract.functions.parameters().call())
        if balance is None or params is None:
            return  # the RPC is away: the next round tries again
        keep = self.ctx.config.bonds_kept * int(params[11])
        amount = int(balance) - keep
        if int(balance) < threshold or amount <= 0:
            return
        outcome = await self.sender.send(round_id, challenge, "claim", [amount])
        if outcome.status == "mined":
            self.ctx.log.info("rewards_claimed", amount=amount, kept=keep)
