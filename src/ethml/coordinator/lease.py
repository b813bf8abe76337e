"""A Redis lease (SET NX PX): one instance at a time leads, or sends with the relayer key. A holder
renews it while it works; a killed holder's lease lapses within its ttl. A holder that loses it while it
works (it stalled past the ttl, or could not reach Redis for that long, and another instance took it) is
stopped: the body of its `async with` is cancelled and LeaseLost raised, so two instances do not lead, or
sign with the relayer key, at the same time for longer than a renewal interval."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog

from ethml.coordinator import redis_keys as k
from ethml.coordinator.background import stop_helper, stop_if_cancelled
from ethml.coordinator.store import Store

log = structlog.get_logger("ethml.coordinator")

#: Extend the lease KEYS[1] by ARGV[2] ms if ARGV[1] (this holder's token) still holds it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
#: Delete the lease KEYS[1] if ARGV[1] still holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(Exception):
    """The lease could not be taken in time, or was lost while held (LeaseLapsed)."""


class LeaseLapsed(LeaseLost):
    """The lease was lost while held: another instance has it now; the body holding it was cut short."""


class Lock:
    def __init__(self, store: Store, name: str, ttl: float) -> None:
        self.store, self.key, self.ttl = store, k.lock(name), ttl
        self.token = secrets.token_hex(8)

    async def acquire(self, wait: float = 30.0) -> bool:
        """Take the lease, or renew it if this holder has it; False if another holds it past `wait` s."""
        deadline = time.monotonic() + wait
        ms = int(self.ttl * 1000)
        while True:
            if await self.store.redis.set(self.key, self.token, nx=True, px=ms):
                return True
            if await self.store.redis.eval(RENEW, 1, self.key, self.token, ms):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def release(self) -> None:
        await self.store.redis.eval(RELEASE, 1, self.key, self.token)

    @contextlib.asynccontextmanager
    async def held(self, wait: float) -> AsyncIterator[None]:
        """The lease for the body of the `async with`, renewed every third of its ttl meanwhile (LeaseLost, the
        body cancelled, should it be lost)."""
        if not await self.acquire(wait):
            raise LeaseLost(f"{self.key} is held by another instance for over {wait:g} s")
        try:
            async with self._kept():
                yield
        finally:
            await self.release()

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Keep a lease this holder has taken (`acquire`) renewed for the body of the `async with`, and hold it
        on after (it lapses within its ttl unless renewed again): for a holder that leads pass after pass, and
        whose pass may take longer than the ttl. LeaseLost, the body cancelled, should it be lost."""
        async with self._kept():
            yield

    @contextlib.asynccontextmanager
    async def _kept(self) -> AsyncIterator[None]:
        """Renew the lease while the body runs; once it is lost, cancel the body and raise LeaseLost."""
        lost = False
        try:
            async with asyncio.timeout(None) as stop:
                renewer = asyncio.create_task(self._renew(stop), name="lease-renewer")
                try:
                    yield
                finally:
                    lost = renewer.done() and not renewer.cancelled() and renewer.exception() is None
                    await stop_helper(renewer)
        except TimeoutError as exc:
            if stop.expired():
                raise LeaseLapsed(
                    f"lost while held: another instance has it now (this one stalled, or could not reach Redis, for "
                    f"over its ttl of {self.ttl:g} s)"
                ) from exc
            raise
        if lost:  # the body ended before the cancel reached it: what it did is done, and nothing was cut short
            log.info("lease_lost_after_body", lease=self.key)

    async def _renew(self, stop: asyncio.Timeout | None = None) -> None:
        """Every third of the ttl, extend the lease; returns once it is lost (firing `stop`). A renewal Redis
        fails is tried again while the lease may still be this holder's (the ttl since the last one)."""
        ms = int(self.ttl * 1000)
        renewed = time.monotonic()
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self.ttl / 3)
            try:
                if await self.store.redis.eval(RENEW, 1, self.key, self.token, ms):
                    renewed = time.monotonic()
                    continue
            except (aioredis.RedisError, OSError) as exc:
                if time.monotonic() - renewed < self.ttl:
                    log.warning("lease_renewal_failed", lease=self.key, error=str(exc) or type(exc).__name__)
                    continue
            log.warning("lease_lost", lease=self.key)
            if stop is not None:
                stop.reschedule(asyncio.get_running_loop().time())  # the body is cancelled now
            return
