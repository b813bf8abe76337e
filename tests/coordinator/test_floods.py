"""API keys listed and revoked by an admin. Many clients at once, none of them at fault: they wait their turn
for a Redis connection instead of getting 503s, a dashboard snapshot is taken once for all who ask in the same
second, and a request refused before its body arrived has its connection closed with the answer instead of
read on for 10 s."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import types
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ethml.coordinator import edge
from ethml.coordinator.redis_server import socket_path
from ethml.coordinator.routes import dashboard
from tests.coordinator.conftest import coordinator_on
from tests.node.conftest import wait_until

#: Limits out of the way: these clients all come from 127.0.0.1, as many clients would come from many addresses.
OPEN = {"key_rate": 1e6, "key_burst": 10**6, "ip_rate": 1e6, "ip_burst": 10**6, "max_client_connections": 0}


async def _burst(session: aiohttp.ClientSession, urls: list[tuple[str, dict[str, str]]]) -> Counter[int]:
    async def one(url: str, headers: dict[str, str]) -> int:
        async with session.get(url, headers=headers) as response:
            await response.read()
            return response.status

    return Counter(await asyncio.gather(*(one(url, headers) for url, headers in urls)))


async def test_a_burst_of_clients_waits_for_redis_connections_and_gets_no_503(anvil_url: str, tmp_path: Path) -> None:
    """300 health checks and 300 task listings at once, each a Redis call or two: redis-py's pool opens 100
    connections at most and failed the 101st command at once ("Too many connections"), which the edge answers
    503 "a backend is unavailable" (and /healthz reported Redis down). Now such a command waits for a
    connection to come back, and a health check shares the PING under way."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server(**OPEN)
        key = await c.requester_key()
        auth = {"Authorization": f"Bearer {key}"}
        urls = [(f"{url}/healthz", {}) for _ in range(300)] + [(f"{url}/api/tasks?limit=1", auth) for _ in range(300)]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
            for _ in range(2):
                statuses = await _burst(session, urls)
                assert statuses == Counter({200: 600}), statuses


async def test_a_dashboard_snapshot_is_taken_once_for_all_who_ask_at_once(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each dashboard request that found the snapshot stale took its own (5 Redis calls and 2 chain calls): N
    viewers cost N times the RPC's quota. Now one snapshot is taken for all the requests that ask while it is
    taken, and a viewer that leaves meanwhile does not cancel it for the others."""
    taken: list[float] = []
    real = dashboard.snapshot

    async def counted(app: Any) -> dict[str, Any]:
        taken.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.5)  # a slow RPC: every request below arrives while it is taken
        return await real(app)

    monkeypatch.setattr(dashboard, "snapshot", counted)
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server(**OPEN)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            # One viewer gives up at once: its request is cancelled while the snapshot is being taken.
            leaver = asyncio.ensure_future(session.get(f"{url}/api/dashboard"))
            await asyncio.sleep(0.05)
            leaver.cancel()
            statuses = await _burst(session, [(f"{url}/api/dashboard", {}) for _ in range(60)])
            assert statuses == Counter({200: 60}), statuses
            assert len(taken) == 1, taken
            # The event streams share it too, encoded once.
            async with session.get(f"{url}/api/dashboard/events") as response:
                line = await asyncio.wait_for(response.content.readline(), 60)
                assert json.loads(line.removeprefix(b"data: "))["instance"]


async def test_a_request_refused_before_its_body_arrived_has_its_connection_closed(
    anvil_url: str, tmp_path: Path
) -> None:
    """An upload refused for its key (none, unknown, a worker token that is no longer valid) or a path that
    does not exist, answered while its body is still on the way: aiohttp went on reading (and discarding) the
    body for up to 10 s, which is what a slow client wants. Now the answer says Connection: close and the
    connection ends with it. A small body that came whole with its headers keeps the connection."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server()
        port = int(url.rsplit(":", 1)[1])

        async def refused(line: bytes, headers: bytes, sent: bytes, length: int) -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(line + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: %d\r\n\r\n" % length + sent)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            rest = await asyncio.wait_for(reader.read(), 60)  # b"" once the server closes: within 60 s, not 10 s
            writer.close()
            return head, rest

        big = 16_000_000
        for line, headers, status in (
            (b"POST /api/files", b"", b"401"),
            (b"POST /api/files", b"Authorization: Bearer nope\r\n", b"401"),
            (b"POST /api/files", b"X-Worker-Token: gone\r\n", b"401"),
            (b"POST /api/nowhere", b"", b"404"),
        ):
            head, rest = await refused(line, headers, b"x" * 1024, big)
            assert head.startswith(b"HTTP/1.1 " + status), (line, headers, head)
            assert b"Connection: close" in head, (line, headers, head)
            assert json.loads(rest)["error"]["status"] == int(status)

        # A body that came whole: answered, and the connection kept for the next request.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"POST /api/files HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            assert head.startswith(b"HTTP/1.1 401") and b"Connection: close" not in head, head
            sizes = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            length = int(sizes[0].split(b":")[1])
            await asyncio.wait_for(reader.readexactly(length), 60)
        writer.close()


async def test_the_bearer_scheme_is_read_in_any_case_and_x_api_key_works(anvil_url: str, tmp_path: Path) -> None:
    """HTTP's authentication schemes are case-insensitive: `bearer <key>` was refused as no key at all."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        await c.start_server()
        for headers in (
            {"Authorization": f"bearer {c.admin_key}"},
            {"Authorization": f"BEARER   {c.admin_key}"},
            {"X-API-Key": c.admin_key},
        ):
            async with aiohttp.ClientSession() as session, session.get(c.url + "/api/workers", headers=headers) as r:
                assert r.status == 200, (headers, await r.text())
        async with (
            aiohttp.ClientSession() as session,
            session.get(c.url + "/api/workers", headers={"Authorization": f"Basic {c.admin_key}"}) as r,
        ):
            assert r.status == 401  # another scheme is not a key


async def test_an_admin_lists_and_revokes_api_keys_but_never_the_last_admin_key(anvil_url: str, tmp_path: Path) -> None:
    """A leaked key stayed valid for good: keys could be created, never listed nor revoked. Now an admin lists
    them (ids, names, roles; never the keys) and revokes one, refused at once by the instance that revoked it and
    within the key cache's 5 s by another; the last admin key is kept (409), so the API always has an admin."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        await c.start_server()
        socket = socket_path(c.root / "server" / "coordinator" / "redis")  # the first one's Redis, shared
        _other, other_url = await c.start_server(redis_url=f"unix://{socket}", data_dir=c.root / "second", relay=False)
        admin = c.admin_key
        status, made, _ = await c.api("POST", "/api/keys", key=admin, body={"name": "lab", "role": "requester"})
        assert status == 201 and made["id"] == hashlib.sha256(made["key"].encode()).hexdigest(), made
        lab = made["key"]

        async def upload(url: str) -> tuple[int, Any, dict[str, str]]:  # (a route that needs a requester's key)
            return await c.api("POST", "/api/files", key=lab, url=url, raw=b"hello", content_type="text/plain")

        for url in (c.url, other_url):  # each instance caches the key (5 s)
            assert (await upload(url))[0] == 201
        status, listed, _ = await c.api("GET", "/api/keys", key=admin)
        assert status == 200
        assert [(r["name"], r["role"]) for r in listed["keys"]] == [("admin", "admin"), ("lab", "requester")]
        assert lab not in json.dumps(listed) and admin not in json.dumps(listed)
        assert (await c.api("GET", "/api/keys", key=lab))[0] == 403

        status, revoked, _ = await c.api("DELETE", f"/api/keys/{made['id']}", key=admin)
        assert status == 200 and revoked == {"id": made["id"], "name": "lab", "role": "requester", "revoked": True}
        status, body, _ = await upload(c.url)  # this instance: at once
        assert status == 401 and body["error"]["message"] == "unknown API key", body

        async def refused_elsewhere() -> bool:
            return (await upload(other_url))[0] == 401

        await wait_until(refused_elsewhere, timeout=60, what="the other instance to refuse the revoked key")
        assert (await c.api("DELETE", f"/api/keys/{made['id']}", key=admin))[0] == 404  # gone already
        assert (await c.api("DELETE", "/api/keys/NOT-AN-ID", key=admin))[0] == 422

        # The last admin key stays; with a second one, the first can go, and the second keeps working.
        [admin_id] = [r["id"] for r in listed["keys"] if r["role"] == "admin"]
        status, body, _ = await c.api("DELETE", f"/api/keys/{admin_id}", key=admin)
        assert status == 409 and "last admin key" in body["error"]["message"], body
        status, second, _ = await c.api("POST", "/api/keys", key=admin, body={"name": "ops", "role": "admin"})
        assert status == 201
        assert (await c.api("DELETE", f"/api/keys/{admin_id}", key=second["key"]))[0] == 200
        assert (await c.api("GET", "/api/keys", key=admin))[0] == 401
        status, body, _ = await c.api("DELETE", f"/api/keys/{second['id']}", key=second["key"])
        assert status == 409, body
        # Two admins revoking each other's keys at once leave one of them.
        status, third, _ = await c.api("POST", "/api/keys", key=second["key"], body={"name": "sec", "role": "admin"})
        answers = await asyncio.gather(
            c.api("DELETE", f"/api/keys/{third['id']}", key=second["key"]),
            c.api("DELETE", f"/api/keys/{second['id']}", key=third["key"], url=other_url),
        )
        assert sorted(a[0] for a in answers) in ([200, 409], [200, 401]), answers
        status, left, _ = await c.api("GET", "/api/keys", key=second["key"])
        if status == 401:
            status, left, _ = await c.api("GET", "/api/keys", key=third["key"], url=other_url)
        assert status == 200 and [r["role"] for r in left["keys"]] == ["admin"], left


async def test_100_continue_is_sent_only_to_a_body_the_server_will_read(anvil_url: str, tmp_path: Path) -> None:
    """A client that sends `Expect: 100-continue` waits for the server's word before its body: aiohttp said
    `100 Continue` before any check, so an upload refused for its key still sent its 16 MiB. Now a refusal is the
    first and final answer, and the 100 comes only when the handler starts reading the body."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server()
        key = await c.requester_key()
        port = int(url.rsplit(":", 1)[1])

        async def ask(headers: bytes, body: bytes) -> list[bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/files HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: text/plain\r\n"
                + headers + b"Content-Length: %d\r\n\r\n" % len(body)
            )  # fmt: skip
            await writer.drain()
            heads = [await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)]
            if heads[0].startswith(b"HTTP/1.1 100"):
                writer.write(body)
                await writer.drain()
                heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60))
            writer.close()
            return [h.split(b"\r\n")[0] for h in heads]

        assert await ask(b"", b"hello") == [b"HTTP/1.1 401 Unauthorized"]
        assert await ask(b"Authorization: Bearer " + key.encode() + b"\r\n", b"hello") == [
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 201 Created",
        ]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/files HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert head.startswith(b"HTTP/1.1 417"), head
        writer.close()


async def test_a_health_ping_that_hangs_answers_redis_down_and_the_next_check_pings_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks share one PING: one that never returns (a connection gone dark) held every later check, after
    Redis was back too. It now has a deadline: that check says Redis is down, and the next one pings anew."""
    from ethml.coordinator.appkeys import STORE
    from ethml.coordinator.routes import health

    monkeypatch.setattr(health, "PING_WAIT", 0.2)
    dark = asyncio.Event()
    answers: list[str] = []

    class Redis:
        async def ping(self) -> bool:
            answers.append("ping")
            if not dark.is_set():
                await asyncio.Event().wait()  # never answers
            return True

    app = aiohttp.web.Application()
    app[STORE] = types.SimpleNamespace(redis=Redis())  # type: ignore[assignment]
    shared = health.redis_answers(app)
    assert await asyncio.wait_for(asyncio.gather(shared(), shared()), 30) == [False, False]
    assert answers == ["ping"]  # one PING for both
    dark.set()  # Redis answers again
    assert await asyncio.wait_for(shared(), 30) is True


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_past_its_connection_cap_is_closed_as_it_connects(anvil_url: str, tmp_path: Path, loop: str) -> None:
    """Nothing counted a client's connections: each held a file descriptor and a handler until aiohttp's
    keep-alive timeout (75 s under ethml serve) without sending a byte, so one address opening them without
    end ran the server out of descriptors and memory. Past --max-client-connections (4 here) the next is
    closed as it is made and counted in /metrics, and a request it sent with its first bytes is not served
    (under uvloop, which ethml serve runs on, it was: the loop read it before the close); the open ones go on,
    and a closed one frees its place. A trusted proxy's connections are not counted (its clients share its
    address)."""
    import uvloop

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_connection_cap(anvil_url, tmp_path))


async def _connection_cap(anvil_url: str, tmp_path: Path) -> None:
    async with coordinator_on(anvil_url, tmp_path) as c:
        runner, url = await c.start_server(max_client_connections=4)
        port = int(url.rsplit(":", 1)[1])
        server = runner.server
        assert isinstance(server, edge.EdgeServer)

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", port)

        async def health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)

        async def refused(first: bytes = b"") -> bool:
            loop = asyncio.get_running_loop()
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.sock_sendall(sock, first)  # in the server's buffer before it accepts the connection
                try:
                    return await asyncio.wait_for(loop.sock_recv(sock, 1000), 30) == b""  # closed, not answered
                except ConnectionResetError:
                    return True

        held = [await connect() for _ in range(4)]

        async def all_counted() -> bool:  # (the server counts each as its accept runs)
            return server.open_by_client == {"127.0.0.1": 4}

        await wait_until(all_counted, timeout=30, what="the four connections counted")
        assert await refused()
        for _ in range(5):
            assert await refused(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await health(*held[0])).startswith(b"HTTP/1.1 200")  # the open ones are served
        held.pop()[1].close()

        async def freed() -> bool:
            return server.open_by_client == {"127.0.0.1": 3}

        await wait_until(freed, timeout=30, what="the closed connection's place freed")
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
            metrics = await response.text()
        assert "ethml_client_connections_refused_total 6.0" in metrics, metrics[-2000:]
        served = 'ethml_http_requests_total{route="/healthz",status="200"} 1.0'  # held[0]'s, none of the refused
        assert served in metrics, [line for line in metrics.splitlines() if "healthz" in line]
        for _reader, writer in held:
            writer.close()

        async def none_open() -> bool:
            return server.open_by_client == {}

        await wait_until(none_open, timeout=30, what="every place freed")

        redis_socket = socket_path(c.root / "server" / "coordinator" / "redis")
        proxied, proxied_url = await c.start_server(
            redis_url=f"unix://{redis_socket}",
            data_dir=c.root / "second",
            relay=False,
            max_client_connections=2,
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
        )
        port = int(proxied_url.rsplit(":", 1)[1])
        behind = [await connect() for _ in range(3)]
        for reader, writer in behind:
            assert (await health(reader, writer)).startswith(b"HTTP/1.1 200")
            writer.close()
        assert proxied.server is not None and proxied.server.open_by_client == {}  # type: ignore[attr-defined]


async def test_a_failure_after_an_answer_began_closes_the_connection_without_a_second_answer(
    anvil_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's event stream has sent its head and a first event when Redis fails: the error middleware
    answered the failure with a whole second HTTP response (a 503) written inside the stream's chunked body.
    Now the failure is logged and the connection closed, the stream cut short (a browser's EventSource
    reconnects). The review's."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        _runner, url = await c.start_server()
        port = int(url.rsplit(":", 1)[1])
        real, calls = dashboard.snapshot, []

        async def redis_goes_away(app: aiohttp.web.Application) -> Any:
            calls.append(1)
            if len(calls) > 1:
                raise RedisConnectionError("Redis went away")
            return await real(app)

        monkeypatch.setattr(dashboard, "snapshot", redis_goes_away)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)  # everything, until the server closes the connection
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\ndata: {" in answer, answer[:300]
        assert answer.count(b"HTTP/1.1 ") == 1 and b'"error"' not in answer, answer[-600:]
        assert len(calls) >= 2  # the second snapshot failed
