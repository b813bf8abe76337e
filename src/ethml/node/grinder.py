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
    """Hashes per second over a sliding window, fed from the search threads."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._samples: list[tuple[float, int]] = []
        self.total = 0

    def add(self, hashes: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += hashes
            self._samples.append((now, hashes))
            cutoff = now - self.window
            while self._samples and self._samples[0][0] < cutoff:
                self._samples.pop(0)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [(t, h) for t, h in self._samples if t >= now - self.window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 0.05)
        return sum(h for _, h in recent) / span


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
            job = await self.inq.get()
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
        try:
            result = await search
        except asyncio.CancelledError:
            job.stop.set()  # the worker threads notice within milliseconds
            raise
        finally:
            self.searching.clear()
            self.ctx.stats.hashes = self.meter.total
            self.ctx.stats.hashrate = self.meter.rate()
        if not result.found or job.is_cancelled:
            self.ctx.log.info("grind_cancelled", request_id=job.request_id, reason=job.reason, hashes=result.hashes)
            return False
        job.nonce = result.nonce
        elapsed = time.monotonic() - started
        self.ctx.emit(SolutionFound(job.request_id, int(result.nonce or 0), result.hashes, elapsed))
        self.ctx.log.info("solution_found", request_id=job.request_id, hashes=result.hashes, seconds=round(elapsed, 3))
        return True
