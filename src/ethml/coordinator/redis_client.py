"""The coordinator's Redis connection pool: redis-py's asyncio client, with commands packed by
hiredis (in C) instead of redis-py's pure-Python packer, which costs an accepted POST /api/tasks more
than its Lua script takes to run. The bytes on the wire are the same; arguments of any other type
than bytes, str, int and float, and commands named in two words, take redis-py's own path."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command  # a dependency: redis[hiredis]
from redis.asyncio.connection import AbstractConnection

_PLAIN = frozenset({bytes, str, int, float})


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0] if args else None
        if (
            args
            and all(type(a) in _PLAIN for a in args)
            and not (b" " in first if isinstance(first, bytes) else " " in str(first))
        ):
            return [pack_command(args)]
        return super().pack_command(*args)  # type: ignore[misc, no-any-return]


def _with_hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    return type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})


def connect(*, url: str | None = None, socket: str | None = None, health_check_interval: int = 10) -> aioredis.Redis:
    """A client on a pool of its own: a redis://, rediss:// or unix:// `url`, or a unix `socket` path."""
    if socket is not None:
        pool = aioredis.ConnectionPool(
            connection_class=aioredis.UnixDomainSocketConnection,
            path=socket,
            health_check_interval=health_check_interval,
        )
    else:
        assert url is not None
        pool = aioredis.ConnectionPool.from_url(url, health_check_interval=health_check_interval)
    pool.connection_class = _with_hiredis_packing(pool.connection_class)
    return aioredis.Redis.from_pool(pool)
