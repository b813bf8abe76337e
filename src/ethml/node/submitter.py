"""TxSubmitter: commits to a round's hidden answer vector with the proof-of-work nonce.

The answers and a fresh random salt are journaled before the commitment is signed, so the node can
always reveal what it committed, also after a crash. A commitment the contract refuses as `InvalidNonce`
means the node worked on another challenge than the contract's (a restarted devnet answers other hashes
for old blocks; a reorg): it reads the challenge from the contract and grinds again.
"""

from __future__ import annotations

import asyncio
import os

from ethml.chain.rounds import commitment_for
from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import NodeWarning
from ethml.node.jobs import Job
from ethml.node.journal import Secret
from ethml.node.sender import TxSender

#: Times one round is ground again after an InvalidNonce before the node gives up on it.
MAX_REGRINDS = 3


class TxSubmitter:
    def __init__(
        self, ctx: NodeContext, inq: asyncio.Queue[Job], sender: TxSender, regrind: asyncio.Queue[Job]
    ) -> None:
        self.ctx = ctx
        self.inq = inq
        self.sender = sender
        self.regrind = regrind
        self._regrinds: dict[int, int] = {}

    async def run(self) -> None:
        await self.sender.recover()
        while True:
            job = await self.ctx.next(self.inq)
            if job is None:
                return
            if job.is_cancelled:
                continue
            await self.submit(job)

    async def submit(self, job: Job) -> None:
        challenge = job.challenge.hex()
        if self.ctx.journal.has(job.round_id, challenge, "commit"):
            self.ctx.log.info("already_committed", round_id=job.round_id)
            return
        if job.is_cancelled:
            self.sender.dropped(job.round_id, job.reason or "cancelled")
            return
        assert job.answers is not None and job.nonce is not None
        secret = self.ctx.journal.save_secret(Secret(job.round_id, challenge, job.answers, os.urandom(32)))
        commitment = commitment_for(job.round_id, self.ctx.address, secret.answers, secret.salt)
        outcome = await self.sender.send(
            job.round_id, challenge, "commit", [job.round_id, job.nonce, commitment], answers=secret.answers
        )
        refused = outcome.status == "dropped" and "InvalidNonce" in outcome.reason
        if refused and await self._retry_with_the_contracts_challenge(job):
            return
        if outcome.status == "dropped" and "ERC20InsufficientBalance" in outcome.reason:
            message = (
                f"round {job.round_id}: {self.ctx.address} holds too little EML for the bond of "
                f"{job.bond / 10**18:g} EML a commitment takes; send it EML (or `fund` its balance on the oracle)"
            )
            self.ctx.emit(NodeWarning(message))
            self.ctx.log.warning("bond_unaffordable", round_id=job.round_id, bond=job.bond)
        if outcome.status == "dropped":
            self.sender.dropped(job.round_id, outcome.reason)

    async def _retry_with_the_contracts_challenge(self, job: Job) -> bool:
        """Re-read the open round's challenge; when it is another than the one ground for, grind again."""
        tries = self._regrinds.get(job.round_id, 0)
        if tries >= MAX_REGRINDS:
            return False
        try:
            current = await self.ctx.contract.functions.getCurrentRound().call()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            return False
        round_id, challenge = int(current[0]), bytes(current[1])
        if round_id != job.round_id or challenge in (bytes(32), job.challenge):
            return False
        self._regrinds = {job.round_id: tries + 1}
        message = f"round {job.round_id}: the contract's challenge is not the one ground for; grinding again"
        self.ctx.emit(NodeWarning(message))
        self.ctx.log.warning("challenge_changed", round_id=job.round_id, old=job.challenge.hex(), new=challenge.hex())
        job.regrind(challenge)
        await self.regrind.put(job)
        return True
