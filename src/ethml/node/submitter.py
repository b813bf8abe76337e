"""TxSubmitter: commits a round's hidden prediction with the proof-of-work nonce.

The prediction and a fresh random salt are journaled before the commitment is signed, so the node
can always reveal what it committed, also after a crash.
"""

from __future__ import annotations

import asyncio
import os

from ethml.chain.deploy import commitment_for
from ethml.node.context import NodeContext
from ethml.node.jobs import Job
from ethml.node.journal import Secret
from ethml.node.sender import TxSender


class TxSubmitter:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[Job], sender: TxSender) -> None:
        self.ctx = ctx
        self.inq = inq
        self.sender = sender

    async def run(self) -> None:
        await self.sender.recover()
        while True:
            job = await self.inq.get()
            if job.is_cancelled:
                continue
            await self.submit(job)

    async def submit(self, job: Job) -> None:
        challenge = job.challenge.hex()
        if self.ctx.journal.has(job.request_id, challenge, "commit"):
            self.ctx.log.info("already_committed", request_id=job.request_id)
            return
        if job.is_cancelled:
            self.sender.dropped(job.request_id, job.reason or "cancelled")
            return
        assert job.prediction is not None and job.nonce is not None
        secret = self.ctx.journal.save_secret(Secret(job.request_id, challenge, job.prediction, os.urandom(32)))
        commitment = commitment_for(job.request_id, self.ctx.address, secret.prediction, secret.salt)
        outcome = await self.sender.send(
            job.request_id, challenge, "commit", [job.request_id, job.nonce, commitment], prediction=secret.prediction
        )
        if outcome.status == "dropped":
            self.sender.dropped(job.request_id, outcome.reason)
