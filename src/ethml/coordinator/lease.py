"""A Redis lease (SET NX PX) so that one instance at a time leads or sends with the relayer key."""

from __future__ import annotations

import asyncio
import secrets
import time

from ethml.coordinator import redis_keys as k
from ethml.coordinator.store import Store


class Lock:
    def __init__(self, store: Store, name: str, ttl: float) -> None:
        self.store, self.key, self.ttl = store, k.lock(name), ttl
        self.token = secrets.token_hex(8)

    async def acquire(self, wait: float = 30.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if await self.store.redis.set(self.key, self.token, nx=True, px=int(self.ttl * 1000)):
                return True
            if await self.store.redis.get(self.key) == self.token.encode():
                await self.store.redis.pexpire(self.key, int(self.ttl * 1000))
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def release(self) -> None:
        if await self.store.redis.get(self.key) == self.token.encode():
            await self.store.redis.delete(self.key)
