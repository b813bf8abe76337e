"""A coordinator on a real anvil chain with its private Redis, in this test's event loop; workers are
real `ethml worker` processes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from web3 import AsyncWeb3

from ethml.chain import EML, Deployment, Parameters, deploy_system, dev_account
from ethml.chain.rpc import http_web3
from ethml.coordinator.appkeys import STORE
from ethml.coordinator.permit import PermitDomain
from ethml.coordinator.redis_server import redis_executable
from ethml.coordinator.server import ServeConfig, make_app
from ethml.coordinator.store import Store
from ethml.ml import Manifest
from ethml.training.flow import stake
from tests.conftest import free_port
from tests.node.conftest import wait_until

TRAINERS = (5, 6, 4)  # the third one only joins when a test needs a replacement
VALIDATORS = (7, 8, 3)
REQUESTER = 9


@dataclass
class Coordinator:
    rpc: str
    w3: AsyncWeb3[Any]
    deployment: Deployment
    deployment_file: Path
    root: Path
    url: str = ""
    admin_key: str = ""
    runners: list[web.AppRunner] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def domain(self) -> PermitDomain:
        assert self.deployment.training is not None
        return PermitDomain(self.deployment.chain_id, self.deployment.token, self.deployment.training)

    def config(self, **overrides: Any) -> ServeConfig:
        base: dict[str, Any] = {
            "rpc_url": self.rpc,
            "deployment": self.deployment,
            "relayer": dev_account(0),
            "data_dir": self.root / "server",
            "heartbeat_interval": 1.0,
            "heartbeat_timeout": 6.0,
            "job_timeout": 8.0,
            "poll_interval": 0.2,
        }
        base.update(overrides)
        return ServeConfig(**base)

    async def start_server(self, **overrides: Any) -> tuple[web.AppRunner, str]:
        port = free_port()
        app = make_app(self.config(port=port, **overrides))
        runner = web.AppRunner(app, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        url = f"http://127.0.0.1:{port}"
        if not self.url:
            self.url = url
            self.admin_key = (self.root / "server" / "coordinator" / "admin.key").read_text().strip()
        return runner, url

    def store(self, runner: web.AppRunner | None = None) -> Store:
        """The store of an instance (the first one by default)."""
        app = (runner or self.runners[0]).app
        assert app is not None
        return app[STORE]

    async def stop_server(self, runner: web.AppRunner) -> None:
        """Stop one instance; when it was the main one, the next start_server becomes the main one."""
        if self.runners and runner is self.runners[0]:
            self.url = ""
        await runner.cleanup()
        self.runners.remove(runner)

    def start_worker(
        self, role: str, account: int, *extra: str, url: str | None = None, data: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`ethml worker` on a data dir of its own (or `data`, to start one again where it ran)."""
        data = data or self.root / f"worker-{role}-{account}-{len(self.workers)}"
        data.mkdir(parents=True, exist_ok=True)
        log = (data / "worker.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "ethml", "worker",
                "--server", (url or self.url).replace("http://", "ws://"),
                "--role", role,
                "--account", str(account),
                "--rpc-url", self.rpc,
                "--deployment", str(self.deployment_file),
                "--data-dir", str(data),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ETHML_LOG_LEVEL": "info"},
        )  # fmt: skip
        proc.log_path = data / "worker.log"  # type: ignore[attr-defined]
        self.workers.append(proc)
        return proc

    def spawn_serve(self, data_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
        """`ethml serve` as a process of its own (to kill it with -9), logging to data_dir/serve.log."""
        data_dir.mkdir(parents=True, exist_ok=True)
        log = (data_dir / "serve.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "ethml", "serve",
                "--rpc-url", self.rpc,
                "--deployment", str(self.deployment_file),
                "--data-dir", str(data_dir),
                "--port", str(port),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ETHML_LOG_LEVEL": "info"},
        )  # fmt: skip
        proc.log_path = data_dir / "serve.log"  # type: ignore[attr-defined]
        self.servers.append(proc)
        return proc

    async def wait_healthy(self, url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
        """Until `url`/healthz answers 200; fails at once if the process exits."""

        async def healthy() -> bool:
            assert proc.poll() is None, proc.log_path.read_text()  # type: ignore[attr-defined]
            try:
                status, _, _ = await self.api("GET", "/healthz", url=url)
            except aiohttp.ClientError:
                return False
            return status == 200

        await wait_until(healthy, timeout=timeout, what=f"ethml serve on {url} to answer")

    async def api(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        body: Any = None,
        url: str | None = None,
        raw: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """A request; `raw` is sent as JSON unless `content_type` says otherwise (or "" for none)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if raw is not None and content_type != "":
            headers["Content-Type"] = content_type or "application/json"
        skip = ("Content-Type",) if content_type == "" else ()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                (url or self.url) + path,
                json=body if raw is None else None,
                data=raw,
                headers=headers,
                skip_auto_headers=skip,
            ) as response,
        ):
            text = await response.text()
            try:
                data: Any = await response.json(content_type=None) if text else None
            except ValueError:
                data = text
            return response.status, data, dict(response.headers)

    async def requester_key(self) -> str:
        status, body, _ = await self.api(
            "POST", "/api/keys", key=self.admin_key, body={"name": "lab", "role": "requester"}
        )
        assert status == 201, body
        return str(body["key"])


async def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """Ctrl-C, and a second one for a worker still finishing a job after 2 s (the first only drains
    it); killed if still there after 10 s. The servers run in this loop: never block it."""
    for signals in (1, 2):
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 2 if signals == 1 else 10)
    for proc in workers:
        if proc.poll() is None:
            proc.kill()


def start_redis(socket: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A Redis server of its own on a unix socket (append-only), to share between instances."""
    socket.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [redis_executable(), "--port", "0", "--unixsocket", str(socket), "--dir", str(socket.parent),
         "--appendonly", "yes", "--save", "", *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


async def answering(client: aioredis.Redis) -> bool:
    """Whether Redis answers a PING: the socket file appears at bind(), and a connection refused until
    listen() is Redis still starting, not a failure."""
    try:
        return bool(await client.ping())
    except redis.exceptions.ConnectionError:  # refused, or still loading its append-only file
        return False


@pytest.fixture
async def redis_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A Store on a Redis server of its own (set up: streams, groups, scripts), for tests of the store
    and the dispatcher without a chain."""
    from ethml.coordinator.redis_client import connect

    socket = tmp_path / "redis" / "redis.sock"
    server = start_redis(socket)
    redis = connect(socket=str(socket))
    try:
        await wait_until(lambda: asyncio.to_thread(socket.exists), timeout=30, what="Redis")
        await wait_until(functools.partial(answering, redis), timeout=30, what="Redis to answer")
        store = Store(redis)
        await store.setup()
        yield store
    finally:
        await redis.aclose()
        server.terminate()
        await asyncio.to_thread(server.wait, 10)


@asynccontextmanager
async def coordinator_on(anvil_url: str, root: Path) -> AsyncIterator[Coordinator]:
    w3 = http_web3(anvil_url)
    deployment = await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(min_difficulty=1 << 10, max_difficulty=1 << 10),
        models=Manifest.load().registry_specs(),
    )
    for who in TRAINERS:
        await stake(w3, deployment, dev_account(who), "trainer", 100 * EML)
    for who in VALIDATORS:
        await stake(w3, deployment, dev_account(who), "validator", 100 * EML)
    file = deployment.save(root / "deployment.json")
    c = Coordinator(anvil_url, w3, deployment, file, root)
    try:
        yield c
    finally:
        await stop_workers(c.workers)
        for runner in list(c.runners):
            await runner.cleanup()
        for proc in c.servers:
            if proc.poll() is None:
                proc.terminate()
        for proc in c.servers:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await w3.provider.disconnect()  # type: ignore[attr-defined]


@pytest.fixture
async def coordinator(anvil_url: str, tmp_path: Path) -> AsyncIterator[Coordinator]:
    async with coordinator_on(anvil_url, tmp_path) as c:
        await c.start_server()
        yield c


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """`start(script)`: a scripted coordinator whose /ws/worker is `script.handler`, and its ws:// URL (the worker
    tests of test_worker_stop.py and test_hostile_server.py)."""
    runners: list[web.AppRunner] = []

    async def start(script: Any) -> str:
        app = web.Application()
        app.router.add_get("/ws/worker", script.handler)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"ws://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
