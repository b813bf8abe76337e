"""The coordinator's Redis client packs commands with hiredis: the same bytes as redis-py's own packer,
which it falls back to for what hiredis is not given (other types, two-word command names)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.exceptions import DataError, MaxConnectionsError

from ethml.coordinator.redis_client import POOL_SIZE, WaitingPool, _with_hiredis_packing, connect
from tests.coordinator.conftest import answering, start_redis
from tests.node.conftest import wait_until

COMMANDS = [
    ("EVALSHA", "ab" * 20, 3, "ethml:rl:ip:127.0.0.1", b"k", "ethml:task:x", 2, 50.0, 100, 20.5, 40, b'{"a":1}'),
    ("SET", "clé-ünïcode", "välue ✓", "EX", 60),
    (b"XADD", b"s", b"*", b"task", b"\x00\xff" * 600),
    ("ZADD", "z", 1735689600.1234567, "m", -3, -0.0, 2**70, 1e-300),
    ("CONFIG GET", "maxmemory"),  # a two-word name: redis-py splits it
]


def test_hiredis_packing_is_byte_for_byte_redis_pys() -> None:
    plain = UnixDomainSocketConnection(path="/nonexistent")
    fast = _with_hiredis_packing(UnixDomainSocketConnection)(path="/nonexistent")
    for command in COMMANDS:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command)), command
    assert b"".join(fast.pack_commands(COMMANDS)) == b"".join(plain.pack_commands(COMMANDS))
    for bad in (True, None, object()):  # what redis-py refuses, it still refuses
        with pytest.raises(DataError):
            fast.pack_command("SET", "k", bad)


@contextlib.asynccontextmanager
async def _redis(tmp_path: Path) -> AsyncIterator[Path]:
    """A Redis server of its own, answering on the unix socket yielded; stopped after."""
    socket = tmp_path / "redis" / "redis.sock"
    server = start_redis(socket)
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
        probe = connect(socket=str(socket))
        await wait_until(functools.partial(answering, probe), timeout=30, what="Redis to answer")
        await probe.aclose()
        yield socket
    finally:
        server.terminate()
        server.wait(10)


async def test_a_client_round_trips_through_a_real_redis(tmp_path: Path) -> None:
    async with _redis(tmp_path) as socket:
        for client in (connect(socket=str(socket)), connect(url=f"unix://{socket}")):
            await wait_until(functools.partial(answering, client), timeout=30, what="Redis to answer")
            value = "välue ✓ " * 500
            pipe = client.pipeline(transaction=False)
            pipe.set("clé", value)
            pipe.get("clé")
            pipe.zadd("z", {"m": 1735689600.1234567})
            pipe.zscore("z", "m")
            assert await pipe.execute() == [True, value.encode(), 1, 1735689600.1234567]
            assert await client.config_get("appendonly") == {"appendonly": "yes"}  # the two-word path
            await client.flushall()
            await client.aclose()


async def test_a_full_pool_waits_for_a_connection_and_gives_up_after_its_wait(tmp_path: Path) -> None:
    """Commands beyond the pool's size wait for a connection to come back (redis-py's pool raised "Too many
    connections" at once, which a request answers with a 503); one that waits past the pool's wait fails."""
    async with _redis(tmp_path) as socket:
        client = connect(socket=str(socket))
        # 300 commands that each hold a connection for 0.1 s, on a pool of 100.
        assert client.connection_pool.max_connections == POOL_SIZE == 100
        assert await asyncio.gather(*(client.blpop(["empty"], timeout=0.1) for _ in range(300))) == [None] * 300

        small = Redis.from_pool(
            WaitingPool(connection_class=UnixDomainSocketConnection, path=str(socket), max_connections=2, wait=1.0)
        )
        holding = [asyncio.ensure_future(small.blpop(["empty"], timeout=60)) for _ in range(2)]

        async def both_held() -> bool:
            return len(small.connection_pool._in_use_connections) == 2

        await wait_until(both_held, timeout=30, what="both connections held")
        with pytest.raises(MaxConnectionsError, match="all 2 Redis connections stayed in use for 1 s"):
            await small.ping()
        # A command waiting when a connection comes back takes it.
        waiting = asyncio.ensure_future(small.set("k", "v"))
        await client.lpush("empty", "a")  # (the other pool) one of the two BLPOPs ends, its connection is free
        assert await asyncio.wait_for(waiting, 60) is True
        await client.lpush("empty", "b")
        assert sorted(r[1] for r in await asyncio.gather(*holding)) == [b"a", b"b"]
        await small.aclose()
        await client.aclose()


async def test_a_full_pool_serves_its_waiters_in_order_and_a_cancelled_one_passes_its_turn(tmp_path: Path) -> None:
    """Two commands that keep taking and releasing the pool's two connections starved a third one: a released
    connection went to whoever asked next, and the third waited out its wait and failed while hundreds of
    commands were served. Now a new command queues behind the waiting ones, and a waiter woken and then cancelled
    passes its turn to the next (who would otherwise wait out the whole wait with a connection free)."""
    async with _redis(tmp_path) as socket:
        pool = WaitingPool(connection_class=UnixDomainSocketConnection, path=str(socket), max_connections=2, wait=20)
        served = [0, 0]
        stop = asyncio.Event()

        async def hot(i: int) -> None:
            while not stop.is_set():
                connection = await pool.get_connection()
                await asyncio.sleep(0.002)
                await pool.release(connection)
                served[i] += 1

        hot_ones = [asyncio.ensure_future(hot(i)) for i in range(2)]
        await wait_until(lambda: _true(min(served) > 10), timeout=60, what="the hot commands to run")
        late = await asyncio.wait_for(pool.get_connection(), 60)  # its turn comes; it did not before
        await pool.release(late)
        stop.set()
        await asyncio.gather(*hot_ones)

        held = await pool.get_connection()
        other = await pool.get_connection()
        first = asyncio.ensure_future(pool.get_connection())
        second = asyncio.ensure_future(pool.get_connection())
        await wait_until(lambda: _true(len(pool._waiting) == 2), timeout=30, what="two waiting")
        await pool.release(held)  # wakes the first ...
        first.cancel()  # ... which leaves before it runs: the second gets the connection, not the wait's 20 s
        with contextlib.suppress(asyncio.CancelledError):
            await first
        got = await asyncio.wait_for(second, 15)
        await pool.release(got)
        await pool.release(other)
        assert not pool._waiting
        await pool.disconnect()


async def _true(value: bool) -> bool:
    return value
