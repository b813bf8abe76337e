"""A logged-in worker's connection on /ws/worker, against the real route, store and dispatcher on a real Redis and a
chain whose `isStaked` the test controls: what keeps a worker connected, what its messages may cost, and the
deadline of a login."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from typing import Any, cast

import aiohttp
import pytest
from eth_account import Account
from pydantic import ValidationError

from ethml.coordinator.appkeys import DISPATCHER, METRICS
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.observe import Observer
from ethml.coordinator.permit import sign_login
from ethml.coordinator.routes import worker_socket
from ethml.coordinator.routes.worker_login import _login_error
from ethml.coordinator.schemas import (
    DETAIL_CHARS,
    ERROR_CHARS,
    WORKER_MESSAGE,
    WorkerLogin,
    bounded_detail,
    first_error,
)
from ethml.coordinator.store import Store
from tests.coordinator.test_worker_login import Server, send_login, serving
from tests.node.conftest import wait_until


async def _logged_in(
    session: aiohttp.ClientSession, server: Server, account: Any = None, role: str = "trainer", autoping: bool = True
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """A staked worker (of a fresh account unless given) logged in: its socket and its consumer name."""
    account = account or Account.create()
    server.chain.staked.add(account.address.lower())
    ws = await session.ws_connect(server.url, autoping=autoping)
    await send_login(ws, account, role)
    welcome = await ws.receive_json(timeout=30)
    assert welcome["type"] == "welcome", welcome
    return ws, f"{welcome['address']}:{welcome['worker_id']}"


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """The messages the server sends until it closes the socket, within 30 s in all (a timeout per read would start
    again after each pong the client's pings bring)."""
    got = []
    async with asyncio.timeout(30):
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                return got
            got.append(msg.json())


def _delayed(server: Server) -> float:
    return server.server.app[METRICS].registry.get_sample_value("ethml_worker_messages_delayed_total") or 0.0


def _cut(server: Server, reason: str) -> float:
    return (
        server.server.app[METRICS].registry.get_sample_value("ethml_workers_disconnected_total", {"reason": reason})
        or 0.0
    )


@pytest.mark.parametrize("keepalive", ["ping", "pong"])
async def test_pings_do_not_stretch_the_time_to_log_in(redis_store: Store, keepalive: str) -> None:
    """The login's 10 s were a timeout per read, started again after each ping or pong (aiohttp answers them inside
    the read): a client pinging every few seconds kept an unauthenticated connection open for good. The login has
    one deadline now, pings or not."""
    async with (
        serving(redis_store, login_within=1.5) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.url) as ws,
    ):
        await ws.receive_json(timeout=30)  # the challenge
        started = time.monotonic()

        async def keep_alive() -> None:
            while not ws.closed:
                await (ws.ping() if keepalive == "ping" else ws.pong())
                await asyncio.sleep(0.2)

        pinger = asyncio.create_task(keep_alive())
        try:
            said = await _until_closed(ws)
        finally:
            pinger.cancel()
        assert said == [{"type": "refused", "message": "no login within 1.5 s"}]
        assert ws.close_code == 4001 and time.monotonic() - started < 25


async def test_pings_before_the_login_are_few(redis_store: Store) -> None:
    """aiohttp answered every ping inside its read: a client that never logged in had 641,800 pongs written for it in
    6 s, and 256 such connections per address are allowed. Ten pings or pongs are answered before the login (a
    worker's heartbeat sends one in 10 s); the next is not, and has the client refused."""
    async with (
        serving(redis_store, login_within=20.0) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.url, autoping=False) as ws,
    ):
        await ws.receive_json(timeout=30)  # the challenge
        for i in range(30):
            await (ws.ping(b"%d" % i) if i % 2 == 0 else ws.pong())
        got = []
        async with asyncio.timeout(30):
            while (msg := await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                got.append(msg.data if msg.type == aiohttp.WSMsgType.PONG else msg.json())
        refused = {"type": "refused", "message": "more than 10 pings or pongs before the login"}
        assert got == [b"0", b"2", b"4", b"6", b"8", refused], got
        assert ws.close_code == 4001


async def test_a_refused_client_is_not_read_for_long(redis_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closing connection waits for the client's own close frame, reading and dropping what comes meanwhile: aiohttp
    waits 10 s by default, in which a client refused at its login had 1.3 GB of pings read, a core's worth of work
    for each login its address's rate allows. A refused connection is cut REFUSAL_LINGER (0.2 s) after its close is
    sent, whatever the wait for the client's close (20 s here)."""
    monkeypatch.setattr(worker_socket, "CLOSE_WAIT", 20.0)
    async with (
        serving(redis_store, login_within=20.0) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.url, autoping=False, autoclose=False) as ws,
    ):
        await ws.receive_json(timeout=30)  # the challenge
        for _ in range(11):
            await ws.pong()
        assert (await ws.receive_json(timeout=30))["type"] == "refused"
        assert (await ws.receive(timeout=30)).type == aiohttp.WSMsgType.CLOSE  # not answered: the client goes on
        refused = time.monotonic()
        async with asyncio.timeout(30):
            with pytest.raises(ConnectionError):
                while True:
                    await ws.ping(b"x" * 125)
                    await asyncio.sleep(0.005)
        assert time.monotonic() - refused < 10  # cut after its linger, not after the 20 s wait


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client's WebSocket frame (masked), of under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_connection_whose_client_stopped_reading_is_cut_once_it_ends(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logged-in client that stops reading (a small receive buffer, never read) has the server's answers fill the
    kernel's send queue, then ends the connection: asyncio's close waits without a limit for that queue to leave, so
    the socket, its memory and the server's connection stayed for good (a review: 2.3 MB queued, still open 40 s
    after the end). The connection is cut CLOSE_WAIT (half a second here) after its handler ended."""
    monkeypatch.setattr(worker_socket, "CLOSE_WAIT", 0.5)
    account = Account.create()
    async with serving(
        redis_store, worker_message_rate=1e6, worker_message_burst=10**6, heartbeat_timeout=300.0
    ) as server:
        server.chain.staked.add(account.address.lower())
        aio_server = server.server.runner.server  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        url = aiohttp.client.URL(server.url)
        await loop.sock_connect(sock, (url.host, url.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            sock,
            f"GET {url.path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
        )
        seen = b""
        while b'"challenge"' not in seen or not seen.rstrip().endswith(b"}"):
            seen += await asyncio.wait_for(loop.sock_recv(sock, 1), 30)  # (nothing read past the challenge)
        challenge = json.loads(seen[seen.index(b"{") :])
        signature = sign_login(account.key, challenge["server"], challenge["nonce"], "trainer")
        login = {"type": "auth", "role": "trainer", "address": account.address, "signature": signature}
        payload = json.dumps(login).encode()
        mask = os.urandom(4)
        await loop.sock_sendall(
            sock,
            bytes([0x81, 0x80 | 126])
            + len(payload).to_bytes(2, "big")
            + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)),
        )

        async def logged_in() -> bool:
            return any(c.address == account.address for c in server.server.app[DISPATCHER].conns.values())

        await wait_until(logged_in, timeout=30, what="the login")
        conn = next(c for c in server.server.app[DISPATCHER].conns.values() if c.address == account.address)
        transport = conn.transport
        assert transport is not None
        async with asyncio.timeout(60):  # its answers fill the kernel's queue, then the transport's buffer starts
            while transport.get_write_buffer_size() == 0:
                bogus = _frame(1, b'{"type": "' + b"x" * 110 + b'"}')  # answered with an error of 300-odd bytes
                # (a batch's answers stay under the transport's 64 KiB mark, past which a send would wait and the
                # connection be cut as not reading: the review's client stopped short of it)
                await loop.sock_sendall(sock, bogus * 60 + _frame(1, b'{"type": "load", "cpu": 1, "memory": 1}'))
                await asyncio.sleep(0.1)
        assert len(aio_server.connections) == 1
        await loop.sock_sendall(sock, _frame(8, (1000).to_bytes(2, "big")))  # the client ends it

        async def cut() -> bool:
            return not aio_server.connections

        await wait_until(cut, timeout=30, what="the connection to be cut")
        sock.close()


async def test_a_worker_s_pings_are_answered_at_once_whatever_its_account_owes(redis_store: Store) -> None:
    """Counted in its account's message rate, an idle worker's ping waited behind the messages its account's other
    workers had queued: aiohttp's heartbeat drops a connection whose pong is 5 s late, so an operator's own idle
    workers lost their connections (a review's run: 6 of 55 workers of one account). A connection's pings are
    counted on their own: with its account 200 s in debt, a ping is answered at once."""
    async with (
        serving(redis_store, worker_message_rate=20.0, worker_message_burst=5) as server,
        aiohttp.ClientSession() as session,
    ):
        ws, name = await _logged_in(session, server, autoping=False)
        for _ in range(4000):  # the account's other workers' messages: 200 s at 20 a second
            server.server.app[DISPATCHER].message_wait(name.split(":")[0], 20.0, 5)
        await ws.ping(b"idle")
        msg = await ws.receive(timeout=30)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"idle"), msg
        await ws.close()


async def test_a_worker_s_load_reports_at_its_pace_do_not_wait_on_its_account(redis_store: Store) -> None:
    """Every load report took a token of the account's message rate: an account's idle workers waited behind its busy
    ones for their heartbeat, and their pings behind the load reports (a review's runs: 75 honest workers of one
    account, 25 load reports a second, all dropped by their own client's heartbeat after a minute; one idle worker
    beside 100 busy ones of its account dropped at 15 s). A load report at the worker's pace (at least half the
    heartbeat interval after the last) takes no token: with its account 200 s in debt, it is read at once."""
    async with (
        serving(redis_store, worker_message_rate=20.0, worker_message_burst=5) as server,
        aiohttp.ClientSession() as session,
    ):
        app = server.server.app
        ws, name = await _logged_in(session, server, autoping=False)
        for _ in range(4000):  # the account's other workers' messages: 200 s at 20 a second
            app[DISPATCHER].message_wait(name.split(":")[0], 20.0, 5)
        await ws.send_json({"type": "load", "cpu": 12.5, "memory": 3.0})
        await ws.ping(b"after the load report")
        msg = await ws.receive(timeout=30)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"after the load report"), msg
        assert app[DISPATCHER].conns[name].cpu == 12.5  # read, not waiting
        await ws.close()


async def test_an_account_s_workers_on_one_server_are_capped(redis_store: Store) -> None:
    """A load report at the worker's pace takes no token of the account's rate: without a cap, one staked account
    could keep as many connections as its address's login rate allowed, each costing Redis calls at its pace (a
    review's run: 200 connections, 105 reports a second, 736 Redis commands a second). An account has at most
    `worker_connections` workers connected to a server (2 here); a worker logging in again replaces its own."""
    async with serving(redis_store, worker_connections=2, login_burst=10) as server, aiohttp.ClientSession() as session:
        account = Account.create()
        first, first_name = await _logged_in(session, server, account)
        second, _ = await _logged_in(session, server, account)
        server.chain.staked.add(account.address.lower())
        third = await session.ws_connect(server.url)
        await send_login(third, account, "trainer")
        said = await _until_closed(third)
        assert (
            said
            == [
                {
                    "type": "refused",
                    "message": f"{account.address} has 2 workers connected to this server already, the most it takes",
                }
            ]
            and third.close_code == 4001
        ), said
        again = await session.ws_connect(server.url)  # the first worker's id: it replaces its own connection
        await send_login(again, account, "trainer", worker_id=first_name.split(":")[1])
        assert (await again.receive_json(timeout=30))["type"] == "welcome"
        other, _ = await _logged_in(session, server)  # another account is not held back
        for ws in (first, second, again, other):
            await ws.close()


def test_a_login_error_repeats_little_of_the_input() -> None:
    """A login with an unknown field named by 60,000 characters was refused with a message quoting the name whole."""
    login = {"type": "auth", "role": "trainer", "address": "0x" + "ab" * 20, "signature": "0x" + "cd" * 65}
    with pytest.raises(ValidationError) as caught:
        WorkerLogin.model_validate_json(json.dumps({**login, "x" * 60_000: 1}))
    assert len(_login_error(caught.value)) < 200


def test_a_validation_error_repeats_little_of_the_input() -> None:
    """A message whose type is 16 KB long was answered with an error quoting it whole: 16 KB asked, 16 KB answered, a
    way to fill the server's send queue at no cost. An error quotes at most ERROR_CHARS characters of its problem."""
    with pytest.raises(ValidationError) as caught:
        WORKER_MESSAGE.validate_json(json.dumps({"type": "A" * 16_000}))
    _where, problem = first_error(caught.value)
    assert len(problem) <= ERROR_CHARS + 40 and problem.endswith(" characters cut)"), problem


async def test_a_connection_s_pings_are_read_at_its_own_rate(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logged-in worker's pings were answered inside aiohttp's read, without limit: one connection could have a
    pong written for it a few hundred thousand times a second, for as long as it stayed. A connection's pings and
    pongs are read at CONTROL_RATE (20 a second here) after a burst of 10, each ping answered in order; they take
    nothing from the account's message rate."""
    monkeypatch.setattr(worker_socket, "CONTROL_RATE", 20.0)

    async with (
        serving(redis_store, worker_message_rate=20.0, worker_message_burst=5) as server,
        aiohttp.ClientSession() as session,
    ):
        account = Account.create()
        ws, name = await _logged_in(session, server, account, autoping=False)
        started = time.monotonic()
        for i in range(39):
            await ws.ping(b"%d" % i)
        await ws.pong()  # unasked: counted too
        await ws.send_json({"type": "nonsense"})
        pongs = []
        async with asyncio.timeout(30):
            while (msg := await ws.receive()).type == aiohttp.WSMsgType.PONG:
                pongs.append(msg.data)
        assert pongs == [b"%d" % i for i in range(39)] and msg.json()["type"] == "error", msg
        assert time.monotonic() - started >= (40 - 10) / 20 * 0.9  # read at 20 a second after the burst
        assert 25 <= _delayed(server) <= 30 and name in server.server.app[DISPATCHER].conns and not ws.closed
        before = _delayed(server)
        other, _ = await _logged_in(session, server, account)  # the same account: its message bucket is whole
        for i in range(4):
            await other.send_json({"type": "nonsense", "n": i})
        assert [(await other.receive_json(timeout=30))["type"] for _ in range(4)] == ["error"] * 4
        assert _delayed(server) == before
        for each in (ws, other):
            await each.close()


async def test_only_load_reports_keep_a_worker_connected(redis_store: Store) -> None:
    """Any message counted as a heartbeat, but only a load report writes the worker's record (what /api/workers
    lists) and reads an admin's disconnection: a worker sending anything else every few seconds was listed nowhere,
    could not be disconnected, and was still given jobs. It is disconnected as silent now; one that reports its
    load stays."""
    async with serving(redis_store, heartbeat_timeout=1.0) as server, aiohttp.ClientSession() as session:
        app = server.server.app
        silent, silent_name = await _logged_in(session, server)
        loud, loud_name = await _logged_in(session, server)
        for i in range(12):  # 2.4 s: past the heartbeat timeout
            await silent.send_json({"type": "result", "job": "1:train:0", "delivery": 1})  # never delivered to it
            await silent.send_json({"type": "nonsense", "n": i})
            await loud.send_json({"type": "load", "cpu": 1.0, "memory": 1.0})
            await asyncio.sleep(0.2)
        answers = [await silent.receive_json(timeout=30) for _ in range(24)]  # read: every message was handled
        assert {a["type"] for a in answers} == {"ack", "error"}, answers
        observer = Observer(server.chain, redis_store, app[DISPATCHER], app[METRICS], heartbeat_timeout=1.0)  # type: ignore[arg-type]
        observer.drop_silent()
        assert await _until_closed(silent) == [] and silent.close_code == 4002
        assert loud_name in app[DISPATCHER].conns and not loud.closed
        assert silent_name != loud_name and _cut(server, "silent") == 1
        await loud.close()


async def test_the_time_the_server_spends_on_a_worker_s_messages_is_not_its_silence(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load report read late because the result before it took the server seconds (a slow chain node asked for the
    trainer's commitment) got an honest worker cut as silent, though it reported every few seconds."""
    async with serving(redis_store, heartbeat_timeout=1.0) as server, aiohttp.ClientSession() as session:
        app = server.server.app
        ws, name = await _logged_in(session, server)

        async def slow_finish(*args: Any) -> str:
            await asyncio.sleep(2.5)  # past the heartbeat timeout
            return "not delivered to this worker"

        monkeypatch.setattr(app[DISPATCHER], "finish", slow_finish)
        observer = Observer(server.chain, redis_store, app[DISPATCHER], app[METRICS], heartbeat_timeout=1.0)  # type: ignore[arg-type]
        await ws.send_json({"type": "result", "job": "1:train:0", "delivery": 1, "ok": True})
        await ws.send_json({"type": "load", "cpu": 1.0, "memory": 1.0})  # waits behind the result
        await asyncio.sleep(1.8)
        observer.drop_silent()  # the result is being handled
        assert (await ws.receive_json(timeout=30))["type"] == "ack"
        conn = app[DISPATCHER].conns[name]

        async def load_read() -> bool:
            return conn.handling_since is None and conn.busy < 1.0

        await wait_until(load_read, timeout=30, what="the load report to be handled")
        observer.drop_silent()
        assert not ws.closed and name in app[DISPATCHER].conns and _cut(server, "silent") == 0
        await ws.close()


async def test_an_account_s_messages_are_read_at_its_rate(redis_store: Store) -> None:
    """A logged-in worker's messages had no limit: each result or drain wrote a log line and each load report ran
    Redis scripts, thousands a second from one connection, around the HTTP limits. An account's messages, all its
    connections together (bursts of 5, 20 a second here), are read at the rate now, the rest waiting in the
    sockets; none is cut off (an honest worker whose jobs all fail at once sends a burst), another account is not
    held up."""

    async with (
        serving(redis_store, worker_message_rate=20.0, worker_message_burst=5) as server,
        aiohttp.ClientSession() as session,
    ):
        account = Account.create()
        first, _ = await _logged_in(session, server, account)
        second, _ = await _logged_in(session, server, account)  # another worker id of the same account
        started = time.monotonic()
        for i in range(30):
            await first.send_json({"type": "nonsense", "n": i})
            await second.send_json({"type": "nonsense", "n": i})
        for ws in (first, second):
            assert [(await ws.receive_json(timeout=30))["type"] for _ in range(30)] == ["error"] * 30
        assert time.monotonic() - started >= (60 - 5) / 20 * 0.9  # read at 20 a second after the burst
        assert 40 <= _delayed(server) <= 55 and not first.closed and not second.closed
        before = _delayed(server)
        other, _ = await _logged_in(session, server)
        for i in range(5):
            await other.send_json({"type": "nonsense", "n": i})
        assert [(await other.receive_json(timeout=30))["type"] for _ in range(5)] == ["error"] * 5
        assert _delayed(server) == before  # its own bucket
        await other.send_json({"type": "nonsense", "detail": "x" * 20_000})
        refused = await other.receive_json(timeout=30)
        assert refused == {"type": "error", "message": "message: over 16384 characters"}, refused
        for ws in (first, second, other):
            await ws.close()


async def test_a_worker_whose_stake_is_gone_is_refused_on_its_next_check(redis_store: Store) -> None:
    """The stake was checked at the login only: a trainer that unstaked kept its connection and was given training
    jobs whose commitments would revert, each held until its time limit. Its load reports check the stake again
    (every 0.2 s here): a chain RPC that fails keeps the worker, an account without its stake is refused (4001) with
    the reason, as its next login would be."""
    async with serving(redis_store, stake_recheck=0.2) as server, aiohttp.ClientSession() as session:
        app = server.server.app
        ws, name = await _logged_in(session, server)
        server.chain.failing = True
        calls = server.chain.calls
        for _ in range(10):
            await ws.send_json({"type": "load", "cpu": 1.0, "memory": 1.0})
            await asyncio.sleep(0.1)

        async def asked_twice() -> bool:
            return server.chain.calls >= calls + 2

        await wait_until(asked_twice, timeout=30, what="the stake to be asked again")
        assert name in app[DISPATCHER].conns and not ws.closed  # an outage is no refusal
        server.chain.failing = False
        server.chain.staked.clear()  # unstaked
        await asyncio.sleep(0.3)
        await ws.send_json({"type": "load", "cpu": 1.0, "memory": 1.0})
        said = await _until_closed(ws)
        assert ws.close_code == 4001, said
        assert said[-1]["type"] == "refused" and "no longer holds a trainer stake" in said[-1]["message"], said
        assert _cut(server, "unstaked") == 1

        async def gone() -> bool:
            return name not in app[DISPATCHER].conns

        await wait_until(gone, timeout=30, what="the connection to be dropped")

        # A validator keeps the seats drawn for it after it asks to unstake (commitScores takes no stake): cutting
        # it off would make each a no-show. Its stake is not asked again.
        validator, validator_name = await _logged_in(session, server, role="validator")
        server.chain.staked.clear()
        calls = server.chain.calls
        for _ in range(5):
            await validator.send_json({"type": "load", "cpu": 1.0, "memory": 1.0})
            await asyncio.sleep(0.1)
        await validator.send_json({"type": "nonsense"})
        assert (await validator.receive_json(timeout=30))["type"] == "error"  # the load reports were read
        assert server.chain.calls == calls and validator_name in app[DISPATCHER].conns
        await validator.close()


def test_a_result_s_detail_is_kept_to_its_first_characters() -> None:
    """A `detail` of 60 KB was stored whole, logged with each failure, and read back whole for every result any
    worker sent for the job. It is cut to DETAIL_CHARS of its text; an ordinary one is kept as sent."""

    def detail(value: Any) -> Any:
        return WORKER_MESSAGE.validate_json(json.dumps({"type": "result", "job": "1:train:0", "detail": value})).detail

    assert detail("x" * 60_000) == "x" * 3972 + "... (56028 characters cut)"  # its JSON: 4,000 characters
    scores = {"scores": list(range(5000))}
    cut = detail(scores)
    assert isinstance(cut, str) and cut.startswith('{"scores": [0, 1, 2') and cut.endswith(" characters cut)")
    assert len(json.dumps(cut)) <= DETAIL_CHARS
    usual = {"model_cid": "bafkrei" + "a" * 52, "sha256": "ab" * 32, "tx": "0x" + "12" * 32}
    assert detail(usual) == usual and detail("an RPC error") == "an RPC error" and detail(None) is None


@pytest.mark.parametrize(
    "value",
    [
        "x" * 60_000,
        "\U0001f600" * 5000,  # 12 characters of JSON each
        'a "quoted" \\ path\n' * 900,
        {"scores": list(range(5000))},
        {"error": "\u00e9" * 3000, "trace": ["line"] * 300},
        "y" * 3998,  # its JSON: 4,000 characters
        "y" * 3999,
    ],
)
def test_a_cut_detail_fits_and_is_kept_as_cut(value: Any) -> None:
    """The worker cuts a long `detail` before sending it and the server cuts what it reads: the server cut the worker's
    cut again (its note made it longer than the limit) and replaced the worker's count of what was cut with its own.
    A cut detail fits the limit with its note, is the longest start of the text that does, and is kept as it is."""
    cut = bounded_detail(value)
    assert len(json.dumps(cut)) <= DETAIL_CHARS
    assert bounded_detail(cut) == cut
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if cut == value:
        assert len(json.dumps(value)) <= DETAIL_CHARS
        return
    kept = text[: len(text) - int(cut.rsplit("(", 1)[1].split()[0])]
    assert cut == f"{kept}... ({len(text) - len(kept)} characters cut)"
    one_more = f"{text[: len(kept) + 1]}... ({len(text) - len(kept) - 1} characters cut)"
    assert len(json.dumps(one_more)) > DETAIL_CHARS  # the longest start that fits


def test_message_buckets_are_pruned_now_and_then_not_on_every_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 1,000 accounts with a bucket, the table was rebuilt on every message while they stayed active: a pass over
    every account's bucket for each message. It is pruned when it has doubled since the last pruning now; an
    account's debt outlives a pruning and a bucket full again does not."""
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    dispatcher = Dispatcher(cast(Store, None), "i", job_timeout=60.0, max_deliveries=3)
    table, prunings = dispatcher._message_buckets, 0
    for i in range(5000):
        dispatcher.message_wait(f"0x{i:040x}", 0.001, 1)  # each account's one token taken: full again in 1,000 s
        if dispatcher._message_buckets is not table:  # (the last one held: a new table cannot take its id)
            table, prunings = dispatcher._message_buckets, prunings + 1
    assert prunings == 3 and len(dispatcher._message_buckets) == 5000  # pruned at 1,000, 2,000 and 4,000 only
    assert dispatcher.message_wait("0x" + "0" * 40, 0.001, 1) == pytest.approx(1000.0)  # its debt kept through them
    now[0] = 2000.0  # every bucket full again
    for i in range(3001):
        dispatcher.message_wait(f"late-{i}", 0.001, 1)
    assert sorted(dispatcher._message_buckets) == sorted(f"late-{i}" for i in range(3001))  # pruned at 8,000
