"""The coordinator's Redis client packs commands with hiredis: the same bytes as redis-py's own packer,
which it falls back to for what hiredis is not given (other types, two-word command names)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.exceptions import DataError

from ethml.coordinator.redis_client import _with_hiredis_packing, connect
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


async def test_a_client_round_trips_through_a_real_redis(tmp_path: Path) -> None:
    socket = tmp_path / "redis" / "redis.sock"
    server = start_redis(socket)
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
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
    finally:
        server.terminate()
        server.wait(10)
