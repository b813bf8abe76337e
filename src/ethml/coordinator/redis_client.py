"""The coordinator's Redis connection pool: redis-py's asyncio client, with commands packed by
hiredis (in C) instead of redis-py's pure-Python packer, which costs an accepted POST /api/tasks more
than its Lua script takes to run. The bytes on the wire are the same; arguments of any other type
than bytes, str, int and float, and commands named in two words, take redis-py's own path.

The pool holds at most POOL_SIZE connections, and a command that finds them all in use waits for one
to come back (up to POOL_WAIT s) instead of failing at once: redis-py's plain pool raised "Too many
connections" there, and 300 clients asking at once got 503s for an outage that was not one."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from hiredis import pack_command  # a dependency: redis[hiredis]
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AuthenticationError, InvalidResponse, MaxConnectionsError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from ethml.urls import mask_url

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


#: Connections a pool opens at most (an instance's commands take well under a millisecond each).
POOL_SIZE = 100
#: How long a command waits for a connection of a full pool before it fails (then the request's 503).
POOL_WAIT = 10.0


class WaitingPool(aioredis.ConnectionPool):
    """A connection pool where a command that finds every connection in use waits for one to be released, first
    come first served: while anyone waits, a new command queues behind them, and a released connection goes to
    the longest waiting (a waiter woken and then cancelled passes its turn on). Taking a connection costs what it
    costs in redis-py's pool while no one waits."""

    def __init__(self, *args: Any, wait: float = POOL_WAIT, **kwargs: Any) -> None:
        kwargs.setdefault("max_connections", POOL_SIZE)
        super().__init__(*args, **kwargs)
        self.wait = wait
        self._waiting: list[asyncio.Future[None]] = []

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if not self._waiting:
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call, no-any-return]
            except MaxConnectionsError:
                pass
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)  # in the queue until this command has a connection, or gives up
        taken = False
        try:
            async with asyncio.timeout(self.wait):
                while True:
                    if self._waiting[0] is turn:  # first in line: try now
                        try:
                            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
                            taken = True
                            return connection
                        except MaxConnectionsError:
                            pass
                    woken = turn
                    await woken
                    turn = loop.create_future()  # the next wake-up on a fresh future, in the same place
                    self._waiting[self._waiting.index(woken)] = turn
        except TimeoutError:
            raise MaxConnectionsError(
                f"all {self.max_connections} Redis connections stayed in use for {self.wait:g} s"
            ) from None
        finally:
            self._leave(turn, taken)

    def _leave(self, turn: asyncio.Future[None], taken: bool) -> None:
        """Out of the queue; the next in line is woken when a connection may be free for it."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(turn)
        if self._waiting and (not taken or self.can_get_connection()):
            self._wake()

    def _wake(self) -> None:
        if self._waiting and not self._waiting[0].done():
            self._waiting[0].set_result(None)

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._wake()


def check_redis_url(url: str) -> None:
    """ValueError saying what is wrong with a --redis URL no connection could be made from (its scheme, host,
    port or database), before anything starts; nothing is connected here. The URL is shown masked, and the
    parser's own words (which may repeat a password) are left out."""
    shown = mask_url(url)
    try:
        scheme = urlsplit(url).scheme
        if scheme in ("redis", "rediss", "unix"):
            aioredis.ConnectionPool.from_url(url)
    except ValueError:
        raise ValueError(
            f"--redis {shown!r} is not a valid URL (its host, port or database does not parse; a password with "
            "'/', '?', '#' or '@' in it must be percent-encoded)"
        ) from None
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--redis {shown!r} is not a redis://, rediss:// or unix:// URL")


def redis_failure(exc: Exception) -> str:
    """What went wrong, in a few words for one line, after "the Redis at URL"."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, AuthenticationError):
        return f"refused the login: {text} (the URL's user name and password)"
    if isinstance(exc, RedisConnectionError):
        return f"did not answer: {text}"
    if isinstance(exc, InvalidResponse):
        return f"answered, but not as a Redis server does: {text}"
    return f"refused: {text}"


async def check_redis(url: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """RedisUnavailable, in one line, unless the Redis at `url` answers a PING within `timeout` s (checked before
    a server starts on it, so that an unreachable one or a refused password is said before anything runs)."""
    from ethml.coordinator.redis_server import RedisUnavailable

    redis = connect(url=url)
    try:
        await asyncio.wait_for(redis.ping(), timeout)
    except TimeoutError:
        raise RedisUnavailable(f"the Redis at {mask_url(url)} did not answer within {timeout:.0f} s") from None
    except RedisError as exc:
        raise RedisUnavailable(f"the Redis at {mask_url(url)} {redis_failure(exc)}") from None
    finally:
        await redis.aclose()


def connect(*, url: str | None = None, socket: str | None = None, health_check_interval: int = 10) -> aioredis.Redis:
    """A client on a pool of its own (`WaitingPool`): a redis://, rediss:// or unix:// `url`, or a unix `socket`
    path."""
    if socket is not None:
        pool = WaitingPool(
            connection_class=aioredis.UnixDomainSocketConnection,
            path=socket,
            health_check_interval=health_check_interval,
        )
    else:
        assert url is not None
        pool = WaitingPool.from_url(url, health_check_interval=health_check_interval)
    pool.connection_class = _with_hiredis_packing(pool.connection_class)
    return aioredis.Redis.from_pool(pool)
