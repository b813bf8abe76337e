"""PowGrinder: the native multi-threaded nonce search, cancelled when the job is superseded."""

from __future__ import annotations

import asyncio
import threading
import time

from ethml.node.context import NodeContext
from ethml.node.events import SolutionFound
from ethml.node.jobs import Job
from ethml.pow import parallel_search, target_for


class HashrateMeter:
    """Hashes per second of time actually spent grinding (idle time between requests does not count),
    and the share of the node's life spent grinding. Fed from the search threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._created = time.monotonic()
        self._busy = 0.0  # seconds of finished searches
        self._busy_since: float | None = None
        self.total = 0

    def add(self, hashes: int) -> None:
        with self._lock:
            self.total += hashes

    def started(self) -> None:
        with self._lock:
            self._busy_since = time.monotonic()

    def stopped(self) -> None:
        with self._lock:
            if self._busy_since is not None:
                self._busy += time.monotonic() - self._busy_since
                self._busy_since = None

    def busy_seconds(self) -> float:
        with self._lock:
            ongoing = time.monotonic() - self._busy_since if self._busy_since is not None else 0.0
            return self._busy + ongoing

    def rate(self) -> float:
        busy = self.busy_seconds()
        return self.total / busy if busy > 0 else 0.0

    def grinding_share(self) -> float:
        alive = time.monotonic() - self._created
        return min(1.0, self.busy_seconds() / alive) if alive > 0 else 0.0


class PowGrinder:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[Job], out: asyncio.Queue[Job]) -> None:
        self.ctx = ctx
        self.inq = inq
        self.out = out
        self.meter = HashrateMeter()
        #: Set while a search runs (for status displays and tests that need to act mid-search).
        self.searching = asyncio.Event()

    async def run(self) -> None:
        while True:
            job = await self.ctx.next(self.inq)
            if job is None:
                return
            if job.is_cancelled:
                continue
            if await self.grind(job):
                await self.out.put(job)

    async def grind(self, job: Job) -> bool:
        started = time.monotonic()

        def progress(hashes: int) -> None:
            self.meter.add(hashes)

        search = asyncio.to_thread(
            parallel_search,
            job.challenge,
            self.ctx.address,
            target_for(job.difficulty),
            threads=self.ctx.config.threads,
            path=self.ctx.config.pow_path,
            stop=job.stop,
            on_progress=progress,
        )
        self.searching.set()
        self.meter.started()
        try:
            result = await search
        except asyncio.CancelledError:
            job.stop.set()  # the worker threads notice within milliseconds
            raise
        finally:
            self.meter.stopped()
            self.searching.clear()
            self.ctx.stats.hashes = self.meter.total
            self.ctx.stats.hashrate = self.meter.rate()
            self.ctx.stats.grinding_share = self.meter.grinding_share()
        if not result.found or job.is_cancelled:
            self.ctx.log.info("grind_cancelled", round_id=job.round_id, reason=job.reason, hashes=result.hashes)
            return False
        job.nonce = result.nonce
        elapsed = time.monotonic() - started
        self.ctx.emit(SolutionFound(job.round_id, int(result.nonce or 0), result.hashes, elapsed))
        self.ctx.log.info("solution_found", round_id=job.round_id, hashes=result.hashes, seconds=round(elapsed, 3))
        return True
