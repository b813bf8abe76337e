"""IpfsFetcher: the data points of a round's requests through ethml.ipfs (local blockstore, then
gateways), all at once."""

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
            job = await self.ctx.next(self.inq)
            if job is None:
                return
            if job.is_cancelled:
                continue
            await self.fetch(job)
            if not job.is_cancelled:
                await self.out.put(job)

    async def fetch(self, job: Job) -> None:
        """Every data point of the round; one that cannot be used only marks its own request invalid."""
        results = await asyncio.gather(*(self.fetch_one(job, cid) for cid in job.data_cids))
        job.datas = [data for data, _ in results]
        job.invalid_reasons = [reason for _, reason in results]

    async def fetch_one(self, job: Job, cid: str) -> tuple[bytes | None, str]:
        """(data, "") or (None, why the data point is invalid input)."""
        deadline = time.monotonic() + self.ctx.config.fetch_retry_seconds
        delay = 0.5
        while True:
            try:
                return await self.ctx.ipfs.cat(cid), ""
            except INVALID_DATA as exc:
                return None, str(exc)
            except AllGatewaysFailed as exc:
                if _tampered_everywhere(exc):
                    return None, str(exc)
                error: IpfsError = exc
            except (BlockNotFound, IpfsTimeout) as exc:
                error = exc
            # Unavailable for now: retry until the deadline, then call it invalid input.
            if time.monotonic() + delay > deadline or job.is_cancelled:
                return None, f"data unavailable: {error}"
            self.ctx.log.info("data_unavailable_retrying", round_id=job.round_id, cid=cid, error=str(error))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
