"""IpfsFetcher: the request's data point through ethml.ipfs (local blockstore, then gateways)."""

from __future__ import annotations

import asyncio
import time

from ethml.errors import (
    AllGatewaysFailed,
    BlockNotFound,
    ContentTooLarge,
    InvalidCID,
    IpfsError,
    IpfsTimeout,
    MalformedDag,
    UnsupportedCID,
)
from ethml.node.context import NodeContext
from ethml.node.jobs import Job

#: Errors that say the data point itself is bad: every honest miner reaches the same verdict.
INVALID_DATA = (InvalidCID, UnsupportedCID, ContentTooLarge, MalformedDag)


def _tampered_everywhere(exc: AllGatewaysFailed) -> bool:
    return bool(exc.failures) and all("does not hash to its CID" in f.reason for f in exc.failures)


class IpfsFetcher:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[Job], out: asyncio.Queue[Job]) -> None:
        self.ctx = ctx
        self.inq = inq
        self.out = out

    async def run(self) -> None:
        while True:
            job = await self.inq.get()
            if job.is_cancelled:
                continue
            await self.fetch(job)
            if not job.is_cancelled:
                await self.out.put(job)

    async def fetch(self, job: Job) -> None:
        deadline = time.monotonic() + self.ctx.config.fetch_retry_seconds
        delay = 0.5
        while True:
            try:
                job.data = await self.ctx.ipfs.cat(job.data_cid)
                return
            except INVALID_DATA as exc:
                job.invalid_reason = str(exc)
                return
            except AllGatewaysFailed as exc:
                if _tampered_everywhere(exc):
                    job.invalid_reason = str(exc)
                    return
                error: IpfsError = exc
            except (BlockNotFound, IpfsTimeout) as exc:
                error = exc
            # Unavailable for now: retry until the deadline, then call it invalid input.
            if time.monotonic() + delay > deadline or job.is_cancelled:
                job.invalid_reason = f"data unavailable: {error}"
                return
            self.ctx.log.info("data_unavailable_retrying", request_id=job.request_id, error=str(error))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
