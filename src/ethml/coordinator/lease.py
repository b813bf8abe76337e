"""A Redis lease (SET NX PX): one instance at a time leads, or sends with the relayer key. A holder
renews it while it works; a killed holder's lease lapses within its ttl."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

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
    """The lease could not be taken in time."""


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
        """The lease for the body of the `async with`, renewed every third of its ttl meanwhile."""
        if not await self.acquire(wait):
            raise LeaseLost(f"{self.key} is held by another instance for over {wait:g} s")
        renewer = asyncio.create_task(self._renew(), name="lease-renewer")
        try:
            yield
        finally:
            try:
                await stop_helper(renewer)
            finally:
                await self.release()

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Keep a lease this holder has taken (`acquire`) renewed for the body of the `async with`, and hold it
        on after (it lapses within its ttl unless renewed again): for a holder that leads pass after pass, and
        whose pass may take longer than the ttl."""
        renewer = asyncio.create_task(self._renew(), name="lease-renewer")
        try:
            yield
        finally:
            await stop_helper(renewer)

    async def _renew(self) -> None:
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self.ttl / 3)
            if not await self.store.redis.eval(RENEW, 1, self.key, self.token, int(self.ttl * 1000)):
                log.warning("lease_lost", lease=self.key)
                return
