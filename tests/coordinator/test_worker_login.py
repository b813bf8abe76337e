"""Logins on /ws/worker against the real route, store and dispatcher on a real Redis, with a chain whose
`isStaked` the test controls: what a login costs, and what a client sees when a backend fails or it hangs up."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account

from ethml.coordinator.appkeys import CHAIN, CONFIG, DISPATCHER, METRICS, STORE
from ethml.coordinator.config import Network, trusted_network
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.edge import errors_and_metrics
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.permit import sign_login
from ethml.coordinator.routes import worker_login
from ethml.coordinator.routes.worker_socket import routes
from ethml.coordinator.store import Store
from tests.node.conftest import wait_until


class FakeChain:
    """`isStaked` answers from `staked`, or fails like an RPC that is down; `calls` counts the calls."""

    chain_id = 31337

    def __init__(self) -> None:
        self.staked: set[str] = set()
        self.failing = False
        self.hanging = False  # a node that accepts the call and never answers
        self.calls = 0
        self.tasks = types.SimpleNamespace(functions=types.SimpleNamespace(isStaked=self._is_staked))

    def _is_staked(self, address: str, role: int) -> Any:
        async def call() -> bool:
            self.calls += 1
            if self.failing:
                raise ConnectionError("the RPC is down")
            if self.hanging:
                await asyncio.Event().wait()
            return address.lower() in self.staked

        return types.SimpleNamespace(call=call)


class Server:
    def __init__(self, server: TestServer, chain: FakeChain, metrics: Metrics) -> None:
        self.server, self.chain, self.metrics = server, chain, metrics
        self.url = str(server.make_url("/ws/worker"))

    def counted(self, status: int) -> float:
        """How many /ws/worker requests were counted with `status`."""
        labels = {"route": "/ws/worker", "status": str(status)}
        return self.metrics.registry.get_sample_value("ethml_http_requests_total", labels) or 0.0


@pytest.fixture
async def server(redis_store: Store) -> AsyncIterator[Server]:
    async with serving(redis_store) as served:
        yield served


@pytest.fixture
async def proxied(redis_store: Store) -> AsyncIterator[Server]:
    """The server behind a reverse proxy it trusts: the test's client, on 127.0.0.1, plays the proxy."""
    async with serving(redis_store, trusted_proxies=(trusted_network("127.0.0.1"),)) as served:
        yield served


@contextlib.asynccontextmanager
async def serving(
    redis_store: Store, trusted_proxies: tuple[Network, ...] = (), **overrides: Any
) -> AsyncIterator[Server]:
    """The worker socket's route on `redis_store` and a FakeChain, with these ServeConfig `overrides`."""
    config = types.SimpleNamespace(
        instance="instance-1",
        heartbeat_interval=1.0,
        heartbeat_timeout=6.0,
        login_within=10.0,
        worker_message_rate=20.0,
        worker_message_burst=100,
        worker_connections=100,
        stake_recheck=60.0,
        ip_rate=50.0,
        ip_burst=100,
        login_rate=0.01,
        login_burst=3,
        trusted_proxies=trusted_proxies,
    )
    vars(config).update(overrides)
    chain, metrics = FakeChain(), Metrics()
    app = web.Application(middlewares=[errors_and_metrics])
    app[CONFIG] = config  # type: ignore[assignment]
    app[STORE] = redis_store
    app[CHAIN] = chain  # type: ignore[assignment]
    app[METRICS] = metrics
    app[DISPATCHER] = Dispatcher(redis_store, "instance-1", job_timeout=30, max_deliveries=3)
    app.add_routes(routes)
    test_server = TestServer(app)
    await test_server.start_server()
    try:
        yield Server(test_server, chain, metrics)
    finally:
        await test_server.close()


async def send_login(
    ws: aiohttp.ClientWebSocketResponse, account: Any, role: str = "trainer", worker_id: str | None = None
) -> None:
    """Answer the server's challenge on `ws` with `account`'s login for `role` (as `worker_id`, if given)."""
    challenge = await ws.receive_json(timeout=30)
    signature = sign_login(account.key, challenge["server"], challenge["nonce"], role)
    login = {"type": "auth", "role": role, "address": account.address, "signature": signature}
    await ws.send_json(login if worker_id is None else {**login, "worker_id": worker_id})


async def _login(session: aiohttp.ClientSession, url: str, forwarded: str | None = None) -> dict[str, Any]:
    """Log in as a fresh (unstaked) account (with this `X-Forwarded-For`): the server's answer."""
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else None
    async with session.ws_connect(url, headers=headers) as ws:
        await send_login(ws, Account.create())
        answer: dict[str, Any] = await ws.receive_json(timeout=30)
        return answer


async def test_logins_over_the_client_address_s_limit_are_refused_before_the_upgrade(
    server: Server, redis_store: Store
) -> None:
    """Every login cost a chain call and a login nonce kept an hour in Redis, with no limit: logins are
    rate-limited per client address (a burst of 3 here), and one over the limit is answered 429 at the
    handshake, before any of that. A request that is no WebSocket handshake takes no token (it gets its 400):
    plain GETs cannot use up the bucket."""
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(server.url) as plain:
                assert plain.status == 400
        for _ in range(3):
            answer = await _login(session, server.url)
            assert answer["type"] == "refused" and "holds no trainer stake" in answer["message"], answer
        for _ in range(2):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await _login(session, server.url)
            assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
    assert server.chain.calls == 3
    assert len(await redis_store.redis.keys("ethml:loginnonce:*")) == 3


async def _refused_at_the_handshake(session: aiohttp.ClientSession, url: str, forwarded: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await _login(session, url, forwarded)
    assert refused.value.status == 429


async def test_behind_a_trusted_proxy_each_client_has_its_own_login_limit(proxied: Server) -> None:
    """Behind a reverse proxy every worker host was counted as the proxy: one host reconnecting in a loop used up
    the logins of all. With the proxy trusted, the limit is per client the proxy names, and a client that sends
    the header itself still gets the address the proxy appended."""
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            answer = await _login(session, proxied.url, "198.51.100.1")
            assert answer["type"] == "refused" and "holds no trainer stake" in answer["message"], answer
        await _refused_at_the_handshake(session, proxied.url, "198.51.100.1")
        await _refused_at_the_handshake(session, proxied.url, "203.0.113.77, 198.51.100.1")  # its own header
        answer = await _login(session, proxied.url, "198.51.100.2")  # another host behind the same proxy
        assert answer["type"] == "refused" and "holds no trainer stake" in answer["message"], answer
    assert proxied.chain.calls == 4


async def test_without_a_trusted_proxy_a_forwarded_header_buys_no_logins(server: Server) -> None:
    """A client that names a new address in each request's `X-Forwarded-For` would get a fresh bucket each time if
    the header were read from anyone: it is read only from a trusted proxy, and none is set here."""
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            await _login(session, server.url, f"198.51.100.{i + 1}")
        for i in range(3, 5):
            await _refused_at_the_handshake(session, server.url, f"198.51.100.{i + 1}")
    assert server.chain.calls == 3


async def test_a_backend_failing_during_a_login_is_told_on_the_websocket(server: Server) -> None:
    """The RPC failed during a login: the middleware wrote an HTTP 503 onto the upgraded socket (which the
    client cannot read) and counted a 503. The worker is told now, in a message and a close (1013, try
    again later), and reconnects after a backoff."""
    server.chain.failing = True
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
        await send_login(ws, Account.create())
        message = await ws.receive(timeout=30)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        assert message.json()["type"] == "unavailable"
        closed = await ws.receive(timeout=30)
        assert closed.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1013, closed

    async def counted() -> bool:
        return server.counted(101) == 1

    await wait_until(counted, timeout=30, what="the login to be counted")
    assert server.counted(503) == 0


async def test_a_chain_rpc_that_never_answers_is_unavailable_within_the_stake_read_wait(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an outside review: with the chain node stopped (it accepted the call and never answered), a login
    waited for web3's five tries of 30 s, and was told `unavailable` 155 s later. It is told after
    STAKE_READ_WAIT now, and tries again."""
    monkeypatch.setattr(worker_login, "STAKE_READ_WAIT", 0.5)
    server.chain.hanging = True
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
        await send_login(ws, Account.create())
        message = await ws.receive(timeout=30)  # (with no bound on the read, this would time out: 30 s)
        assert message.type == aiohttp.WSMsgType.TEXT and message.json()["type"] == "unavailable", message
        closed = await ws.receive(timeout=30)
        assert closed.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1013, closed
    assert server.chain.calls == 1


async def test_a_client_that_hangs_up_before_its_login_is_no_backend_failure(server: Server) -> None:
    """A client that hung up before its login was answered with a refusal on the closed socket, which
    failed and was logged and counted as a backend's failure (503)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url) as ws:
            await ws.receive_json(timeout=30)
        assert (await _login(session, server.url))["type"] == "refused"  # the server serves on

    async def counted() -> bool:
        return server.counted(101) == 2

    await wait_until(counted, timeout=30, what="both connections to be counted")
    assert server.counted(503) == 0 and server.counted(500) == 0
