"""The private Redis of `ethml serve`: it dies with the process that started it, even one killed with
-9; one left over is taken over with its data; a data dir in use by a live server is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ethml.coordinator.redis_server import MAX_SOCKET_PATH, EmbeddedRedis, RedisUnavailable, socket_path
from tests.conftest import missing_service
from tests.coordinator.conftest import start_redis
from tests.node.conftest import wait_until

HOLDER = """
import asyncio, sys, time
from pathlib import Path
from ethml.coordinator.redis_server import EmbeddedRedis

async def main():
    redis = EmbeddedRedis(Path(sys.argv[1]))
    await redis.start()
    print(redis.process.pid, flush=True)
    time.sleep(3600)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_the_private_redis_dies_with_a_process_killed_with_9(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        missing_service("Linux (PR_SET_PDEATHSIG)")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        redis_pid = int(holder.stdout.readline())
        assert _alive(redis_pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 30
        while _alive(redis_pid):
            assert time.monotonic() < deadline, "the private Redis outlived the process that started it"
            time.sleep(0.05)
    finally:
        holder.kill()
        holder.wait(10)


async def test_a_leftover_redis_is_taken_over_with_its_data_and_a_live_owner_refuses_a_second(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "coordinator" / "redis"
    directory.mkdir(parents=True)
    socket = socket_path(directory)
    # A Redis as a killed server leaves it: running, on the socket, with its pid file, with no owner.
    orphan = start_redis(socket, "--pidfile", str(directory / "redis.pid"))
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="the leftover Redis")
        client = aioredis.Redis(unix_socket_path=str(socket))
        await wait_until(client.ping, timeout=30, what="the leftover Redis to answer")
        await client.set("ethml:checkpoint", 42)
        await client.aclose()
        embedded = EmbeddedRedis(directory)
        await embedded.start()
        try:
            assert await asyncio.to_thread(orphan.wait, 10) == 0  # shut down, cleanly
            assert embedded.process is not None and embedded.process.pid != orphan.pid
            client = aioredis.Redis(unix_socket_path=str(socket))
            assert await client.get("ethml:checkpoint") == b"42"  # its data survived the take-over
            await client.aclose()
            second = EmbeddedRedis(directory)  # another server on the same data dir
            with pytest.raises(RedisUnavailable, match=f"another ethml serve \\(pid {os.getpid()}\\)"):
                await second.start()
            assert embedded.process.poll() is None  # the live one is untouched
        finally:
            embedded.stop()
        again = EmbeddedRedis(directory)  # after a clean stop, a new start just works
        await again.start()
        again.stop()
    finally:
        orphan.kill()
        orphan.wait(10)


async def test_a_data_dir_too_deep_for_a_socket_address_still_gets_its_redis(tmp_path: Path) -> None:
    # A unix socket's address holds 107 bytes of path: a deep data dir used to time out after 30 s.
    directory = tmp_path / ("d" * 60) / ("e" * 60) / "coordinator" / "redis"
    assert len(os.fsencode(directory / "redis.sock")) > MAX_SOCKET_PATH
    embedded = EmbeddedRedis(directory)
    assert len(os.fsencode(embedded.socket)) <= MAX_SOCKET_PATH
    assert embedded.socket == socket_path(directory)  # the same data dir always finds the same socket
    await embedded.start()
    try:
        client = aioredis.Redis(unix_socket_path=str(embedded.socket))
        await client.set("ethml:checkpoint", 7)
        await client.aclose()
    finally:
        embedded.stop()
    again = EmbeddedRedis(directory)
    await again.start()
    try:
        client = aioredis.Redis(unix_socket_path=str(again.socket))
        assert await client.get("ethml:checkpoint") == b"7"  # the append-only file is in the data dir
        await client.aclose()
    finally:
        again.stop()


async def test_a_private_redis_that_dies_is_started_again_with_its_data(tmp_path: Path) -> None:
    """Found by an outside review: the private Redis killed on its own (the OOM killer, a `kill -9` of its pid)
    left `ethml serve` answering 503 for good while it looked alive to a service manager. The server's
    supervisor starts it again from its append-only file, and a client of the old one finds the new one."""
    embedded = EmbeddedRedis(tmp_path / "coordinator" / "redis")
    await embedded.start()
    supervisor = asyncio.create_task(embedded.keep_running(every=0.1))
    client = aioredis.Redis(unix_socket_path=str(embedded.socket))
    try:
        await client.set("ethml:checkpoint", 42)
        await client.bgrewriteaof()  # on disk now, not after the next second's fsync
        await wait_until(lambda: _rewritten(client), timeout=30, what="the append-only file's rewrite")
        assert embedded.process is not None
        killed = embedded.process.pid
        os.kill(killed, signal.SIGKILL)

        async def answers_again() -> bool:
            if embedded.process is None or embedded.process.pid == killed:
                return False
            try:
                return bool(await client.get("ethml:checkpoint") == b"42")
            except (OSError, aioredis.RedisError):
                return False

        await wait_until(answers_again, timeout=60, what="the Redis started again, with its data")
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await client.aclose()
        embedded.stop()
    assert embedded.process is not None and embedded.process.poll() is not None  # stopped: not started again


async def _rewritten(client: aioredis.Redis) -> bool:
    info = await client.info("persistence")
    return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
