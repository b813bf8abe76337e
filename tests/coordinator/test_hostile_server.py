"""`ethml worker` against a coordinator that does not play by the rules (a hostile one, or a broken one): what it
sends must never cost the worker's operator a bond, its stake's gas, its memory or a stop that ends. Each test
has the server do one thing and checks what the real worker does then."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ethml.chain import dev_account
from ethml.chain.reverts import Revert
from ethml.coordinator import worker as worker_module
from ethml.coordinator.worker import (
    EVENTS_KEPT,
    FIRST_BACKOFF,
    MAX_UNANSWERED_RELEASES,
    RETRY_AFTER_CAP,
    Worker,
    WorkerConfig,
    WorkerRefused,
    _retry_after,
    reconnect_delay,
)
from ethml.errors import EthmlError, TransactionReverted
from ethml.training.trainer import Opening
from ethml.urls import redact_urls
from tests.node.conftest import wait_until as _wait_until


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    async def holds() -> bool:
        return predicate()

    await _wait_until(holds, timeout=timeout, what=what)


def _job(job: str, kind: str = "train", chain_task: int = 1) -> dict[str, Any]:
    return {"type": "job", "job": job, "kind": kind, "task": "t", "chain_task": chain_task, "delivery": 1}


class Server:
    """One coordinator's side: each connection gets the next of `challenges` and `welcomes` (the last one
    repeats; None for a well-formed one), then `jobs`; it answers releases and results, and a drain only if
    `answers_drain`. It records what the worker sent and the time each load report came."""

    def __init__(self) -> None:
        self.challenges: list[dict[str, Any] | None] = [None]
        self.welcomes: list[dict[str, Any] | None] = [None]
        self.jobs: list[dict[str, Any]] = []
        self.answers_drain = True
        self.received: list[dict[str, Any]] = []
        self.loads: list[float] = []
        self.connections = 0
        self.uploads: list[str] = []  # the paths POSTed to
        self.handshakes: list[float] = []  # when each handshake came (the loop's clock)
        self.refuse_handshakes = 0  # answer the first so many handshakes 429 with `Retry-After: 2`
        self.close_after_welcome: Callable[[int], float | None] = lambda n: None  # seconds to hold connection n
        self.on_upload: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    def _next(self, items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        return items[min(self.connections, len(items)) - 1]

    async def socket(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append(asyncio.get_running_loop().time())
        if len(self.handshakes) <= self.refuse_handshakes:
            return web.json_response({"error": "rate limit exceeded"}, status=429, headers={"Retry-After": "2"})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        challenge = self._next(self.challenges)
        await ws.send_json(challenge or {"type": "challenge", "nonce": "n0", "server": "s0", "chain_id": 1})
        await ws.receive_json()
        welcome = self._next(self.welcomes)
        await ws.send_json(
            welcome
            or {"type": "welcome", "heartbeat": 5, "running": [], "upload_token": "t", "features": ["drain", "release"]}
        )
        hold = self.close_after_welcome(self.connections)
        if hold is not None:
            await asyncio.sleep(hold)
            await ws.close(code=1013, message=b"try again later")
            return ws
        for job in self.jobs if self.connections == 1 else []:
            await ws.send_json(job)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data["type"] == "load":
                self.loads.append(asyncio.get_running_loop().time())
                continue
            self.received.append(data)
            if data["type"] == "drain" and self.answers_drain:
                await ws.send_json({"type": "draining", "running": []})
            elif data["type"] == "release":
                await ws.send_json({"type": "released", "job": data["job"], "released": True})
            elif data["type"] == "result":
                await ws.send_json({"type": "ack", "job": data["job"], "recorded": True})
        return ws

    async def upload(self, request: web.Request) -> web.StreamResponse:
        self.uploads.append(request.path)
        if self.on_upload is not None:
            return await self.on_upload(request)
        await request.read()
        return web.json_response({"cid": "x"}, status=201)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    coordinator = Server()
    app = web.Application()
    app.router.add_get("/ws/worker", coordinator.socket)
    app.router.add_post("/api/files", coordinator.upload)
    app.router.add_post("/elsewhere", coordinator.upload)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield coordinator, f"ws://127.0.0.1:{port}"
    await runner.cleanup()


class FakeWorker(Worker):
    """A real worker whose jobs wait for `release_jobs` (or raise `fail_with`), with no chain nor IPFS; its reveal
    duties are what a test puts in `owed`."""

    def __init__(self, url: str, data_dir: Path, **config: Any) -> None:
        config.setdefault("max_backoff", 0.2)
        super().__init__(
            WorkerConfig(server=url, role=config.pop("role", "trainer"), data_dir=data_dir, **config),
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            dev_account(5),
            None,  # type: ignore[arg-type]
        )
        self.release_jobs = asyncio.Event()
        self.started: list[str] = []
        self.fail_with: Exception | None = None
        self.owed: dict[int, asyncio.Event] = {}

    def _resume_duties(self) -> None:
        async def reveal(made: asyncio.Event) -> None:
            await made.wait()

        for task, made in self.owed.items():
            self.duties[task] = asyncio.create_task(reveal(made))

    def _committing(self, job_id: str) -> bool:
        return False

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        self.started.append(job["job"])
        if self.fail_with is not None:
            raise self.fail_with
        await self.release_jobs.wait()
        return {"done": True}, None


async def _connected(worker: Worker, run: asyncio.Task[None]) -> None:
    while True:
        event = await asyncio.wait_for(worker.events.get(), 60)
        if event["event"] == "connected":
            return
        assert not run.done()


@pytest.mark.parametrize(
    ("challenge", "welcome"),
    [
        ({"type": "challenge", "server": "s"}, None),  # no nonce: a KeyError ended run()
        ({"type": "challenge", "server": "s\nrole: validator", "nonce": "n"}, None),  # a line break in what is signed
        (None, {"type": "welcome", "features": 5}),  # a TypeError ended run()
        (None, {"type": "welcome", "heartbeat": "soon"}),  # a ValueError ended run()
        (None, {"type": "welcome", "upload_token": 12345}),  # the reveal's upload died later, never retried
    ],
)
async def test_a_malformed_login_is_a_disconnect_and_the_worker_logs_in_again(
    server: tuple[Server, str], tmp_path: Path, challenge: dict[str, Any] | None, welcome: dict[str, Any] | None
) -> None:
    """A challenge or a welcome the worker cannot read ended `run()` with an exception (and with it every reveal
    the worker owed, each a bond): it is now a failed connection, tried again after a backoff."""
    coordinator, url = server
    coordinator.challenges = [challenge, None]
    coordinator.welcomes = [welcome, None]
    worker = FakeWorker(url, tmp_path)
    run = asyncio.create_task(worker.run())
    try:
        await _connected(worker, run)
        assert coordinator.connections == 2
        assert worker.upload_token == "t"
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)


def test_a_reconnection_s_delay_is_drawn_and_waits_for_retry_after() -> None:
    assert reconnect_delay(2.0, draw=lambda: 0.0) == 1.0
    assert reconnect_delay(2.0, draw=lambda: 1.0) == 2.0
    drawn = [reconnect_delay(2.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in drawn) and len(set(drawn)) > 150
    assert reconnect_delay(0.5, retry_after=5.0) == 5.0
    assert reconnect_delay(0.5, retry_after=10.0**9) == RETRY_AFTER_CAP
    assert reconnect_delay(8.0, retry_after=1.0, draw=lambda: 1.0) == 8.0
    answers = {"3": 3.0, " 7 ": 7.0, "9" * 5000: RETRY_AFTER_CAP, "Wed, 21 Oct 2026 07:28:00 GMT": None, "\xb2": None}
    for header, seconds in {**answers, "-1": None, "1.5": None, "": None}.items():
        assert _retry_after(CIMultiDictProxy(CIMultiDict({"Retry-After": header}))) == seconds, header
    assert _retry_after(CIMultiDictProxy(CIMultiDict())) is None
    assert _retry_after(None) is None


async def _disconnects(worker: Worker, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while len(seen) < count:
        event = await asyncio.wait_for(worker.events.get(), 60)
        if event["event"] == "disconnected":
            seen.append(event)
    return seen


async def _retry_delays(url: str, data_dir: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` reconnections (their `disconnected` events) of a worker with a 4 s backoff limit."""
    worker = FakeWorker(url, data_dir, max_backoff=4.0)
    run = asyncio.create_task(worker.run())
    try:
        return await _disconnects(worker, count)
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)


async def test_sessions_the_server_ends_at_once_are_backed_off_from(server: tuple[Server, str], tmp_path: Path) -> None:
    """A server that closed every session right after the login (1013: its Redis down, say) was logged in to
    again every half second for as long as that lasted, by every worker at once: a session that ends before
    STABLE_SESSION now backs off as a failed connection does, each delay drawn afresh."""
    coordinator, url = server
    coordinator.close_after_welcome = lambda n: 0.0
    seen = await _retry_delays(url, tmp_path, 6)
    assert {e["reason"] for e in seen} == {"connection closed (1013)"}
    backoff = [min(FIRST_BACKOFF * 2**i, 4.0) for i in range(6)]
    assert all(b / 2 <= e["retry_in"] <= b for e, b in zip(seen, backoff, strict=True)), seen
    gaps = [b - a for a, b in zip(coordinator.handshakes, coordinator.handshakes[1:], strict=False)]
    assert all(gap >= b / 2 for gap, b in zip(gaps, backoff, strict=False)), gaps  # slept as said
    assert sum(gaps[:5]) >= 5.0  # half of 0.5 + 1 + 2 + 4 + 4 at least: not five half-seconds


async def test_a_session_that_lasted_starts_the_backoff_again(
    server: tuple[Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "STABLE_SESSION", 1.0)
    coordinator, url = server
    coordinator.close_after_welcome = lambda n: 1.5 if n == 4 else 0.0
    delays = [e["retry_in"] for e in await _retry_delays(url, tmp_path, 5)]
    assert delays[2] >= 1.0  # the third short session in a row: a backoff of 2 s
    assert FIRST_BACKOFF / 2 <= delays[3] <= FIRST_BACKOFF  # after a session of 1.5 s: from the start
    assert FIRST_BACKOFF <= delays[4] <= 2 * FIRST_BACKOFF


async def test_a_refused_handshake_waits_for_its_retry_after(server: tuple[Server, str], tmp_path: Path) -> None:
    """A handshake answered 429 (the logins of the worker's address over their rate) was tried again after the
    backoff's half second, and refused again, whatever `Retry-After` said."""
    coordinator, url = server
    coordinator.refuse_handshakes = 2
    worker = FakeWorker(url, tmp_path)
    run = asyncio.create_task(worker.run())
    try:
        seen = await _disconnects(worker, 2)
        await _connected(worker, run)
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)
    assert all(e["retry_in"] == 2.0 and e["reason"].startswith("handshake refused: 429") for e in seen), seen
    first, second, third = coordinator.handshakes[:3]
    assert second - first >= 2.0 and third - second >= 2.0


async def test_a_refused_worker_makes_the_reveals_it_owes_before_it_exits(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    """A refusal (or an admin's disconnect) ended `run()` at once and cancelled the reveals owed: a coordinator
    that refused the login burned the bond of each. They are made first now; `run()` raises after them."""
    coordinator, url = server
    coordinator.welcomes = [{"type": "refused", "message": "go away"}]
    worker = FakeWorker(url, tmp_path)
    worker.owed = {7: asyncio.Event(), 8: asyncio.Event()}
    run = asyncio.create_task(worker.run())
    await wait_until(lambda: run.done() or worker._refused is not None, timeout=60, what="the refusal")
    for task, made in worker.owed.items():
        assert not run.done(), "run() ended with reveals owed"
        assert not worker.duties[task].done(), "a reveal owed was cancelled"
        made.set()
        await asyncio.wait_for(worker.duties[task], 30)
    with pytest.raises(WorkerRefused, match="go away"):
        await asyncio.wait_for(run, 30)
    assert coordinator.connections == 1  # a refusal is not tried again


async def test_a_refused_worker_stopped_now_does_not_wait_for_its_reveals(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    """The operator's stop still stops at once (the reveals owed resume when the worker starts again)."""
    coordinator, url = server
    coordinator.welcomes = [{"type": "refused", "message": "go away"}]
    worker = FakeWorker(url, tmp_path)
    worker.owed = {7: asyncio.Event()}
    run = asyncio.create_task(worker.run())
    await wait_until(lambda: coordinator.connections >= 1, timeout=60, what="the login")
    worker.stop_now()
    await asyncio.wait_for(run, 30)  # returns (stopped now), does not raise
    assert worker.duties[7].cancelled()


async def test_jobs_beyond_the_capacity_or_of_the_other_role_are_handed_back(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    """A worker ran every job it was sent: a server could start six training jobs (six processes, six bonds) on a
    worker that announced one, or have a trainer run a validator's job (and pay for its draw). Only jobs of its
    role, up to its capacity, run; the others go straight back to the server."""
    coordinator, url = server
    coordinator.jobs = [_job("1:train:0"), _job("2:train:0", chain_task=2), _job("3:validate:0", "validate", 3)]
    worker = FakeWorker(url, tmp_path, capacity=1)
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(
            lambda: len([m for m in coordinator.received if m["type"] == "release"]) == 2,
            timeout=60,
            what="two jobs handed back",
        )
        assert worker.started == ["1:train:0"]
        assert sorted(m["job"] for m in coordinator.received if m["type"] == "release") == [
            "2:train:0",
            "3:validate:0",
        ]
        worker.release_jobs.set()
        await wait_until(lambda: any(m["type"] == "result" for m in coordinator.received), timeout=60, what="result")
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)


async def test_a_validator_is_sent_no_training_job(server: tuple[Server, str], tmp_path: Path) -> None:
    coordinator, url = server
    coordinator.jobs = [_job("1:train:0"), _job("1:validate:0", "validate")]
    worker = FakeWorker(url, tmp_path, role="validator", capacity=4)
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.started == ["1:validate:0"], timeout=60, what="the validation job")
        await wait_until(
            lambda: [m["job"] for m in coordinator.received if m["type"] == "release"] == ["1:train:0"],
            timeout=60,
            what="the training job handed back",
        )
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)


async def test_a_drain_the_server_never_answers_still_ends(
    server: tuple[Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that never answered the drain held a graceful stop for good (only a second signal ended it)."""
    monkeypatch.setattr(worker_module, "DRAIN_ANSWER_WAIT", 0.5)
    coordinator, url = server
    coordinator.answers_drain = False
    worker = FakeWorker(url, tmp_path)
    run = asyncio.create_task(worker.run())
    await _connected(worker, run)
    worker.drain()
    await asyncio.wait_for(run, 60)
    assert [m["type"] for m in coordinator.received] == ["drain"]


async def test_the_load_interval_the_server_asks_for_is_bounded(server: tuple[Server, str], tmp_path: Path) -> None:
    """A heartbeat of -1 in the welcome had the worker send load reports in a busy loop (two thirds of a core,
    over 100,000 reports in seconds); the interval is now at least a second."""
    coordinator, url = server
    coordinator.welcomes = [{"type": "welcome", "heartbeat": -1, "features": ["drain", "release"]}]
    worker = FakeWorker(url, tmp_path)
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: len(coordinator.loads) >= 3, timeout=60, what="three load reports")
        gaps = [b - a for a, b in zip(coordinator.loads, coordinator.loads[1:], strict=False)]
        assert min(gaps) >= 0.9, gaps  # (sleeps are never shorter than asked: only a busy host makes them longer)
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)


class _Cat:
    async def cat(self, cid: str, max_size: int | None = None) -> bytes:
        return b"model bytes"


async def test_the_artifact_upload_follows_no_redirect(server: tuple[Server, str], tmp_path: Path) -> None:
    """A 307 on the upload had the worker POST the artifact again, with its upload token and the opening of its
    commitment, to wherever the server pointed (and take that host's 201 for the coordinator's)."""
    coordinator, url = server

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        if request.path == "/api/files":
            raise web.HTTPTemporaryRedirect("/elsewhere")
        await request.read()
        return web.json_response({"cid": "x"}, status=201)

    coordinator.on_upload = elsewhere
    worker = FakeWorker(url, tmp_path)
    worker.ipfs = _Cat()  # type: ignore[assignment]
    worker.upload_token = "secret-token"
    opening = Opening(task=1, model_cid="bafy", sha256="00" * 32, claim=1, salt="0x" + "11" * 32)
    async with aiohttp.ClientSession() as session:
        worker._session = session
        with pytest.raises(EthmlError, match="HTTP 307"):
            await worker._upload(opening)
    assert coordinator.uploads == ["/api/files"]


async def test_a_failure_said_to_the_server_quotes_no_url_whole(server: tuple[Server, str], tmp_path: Path) -> None:
    """A failed job's detail repeated the error's text, and aiohttp's quotes the URL: an RPC provider's key in its
    path went to the coordinator (which can make a provider rate-limit the worker at will)."""
    coordinator, url = server
    coordinator.jobs = [_job("1:train:0")]
    worker = FakeWorker(url, tmp_path)
    request = aiohttp.RequestInfo(
        URL("https://rpc.example:443/v3/PROVIDER-KEY"),
        "POST",
        CIMultiDictProxy(CIMultiDict()),
    )
    worker.fail_with = aiohttp.ClientResponseError(request, (), status=429, message="Too Many Requests")
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: any(m["type"] == "result" for m in coordinator.received), timeout=60, what="result")
        result = next(m for m in coordinator.received if m["type"] == "result")
        assert not result["ok"] and "429" in result["detail"] and "rpc.example" in result["detail"], result
        assert "PROVIDER-KEY" not in json.dumps(result)
    finally:
        worker.stop_now()
        await asyncio.wait_for(run, 30)


def test_urls_are_cut_to_their_host() -> None:
    said = "url='https://user:pw@mainnet.example:443/v3/KEY?apikey=K#f' then http://h:8545 and wss://h/x."
    assert redact_urls(said) == "url='https://mainnet.example:443/…' then http://h:8545 and wss://h/…."


async def test_events_nobody_reads_do_not_pile_up(tmp_path: Path) -> None:
    """Every server message was copied into an unbounded queue that `ethml worker` never reads: a server acking
    in a loop grew the worker by hundreds of MiB. The newest EVENTS_KEPT are kept."""
    worker = FakeWorker("ws://127.0.0.1:9", tmp_path)
    for n in range(EVENTS_KEPT * 4):
        worker._event({"event": "acked", "n": n})
    assert worker.events.qsize() == EVENTS_KEPT
    assert worker.events.get_nowait()["n"] == EVENTS_KEPT * 3


# What an outside review of the checks above found: messages that still ended the worker, a refusal during a
# commitment, an honest server's job refused, memory and a stop a server could still hold.

WELCOME = {"type": "welcome", "heartbeat": 5, "running": [], "upload_token": "t", "features": ["drain", "release"]}
CHALLENGE = {"type": "challenge", "nonce": "n0", "server": "s0", "chain_id": 1}


class Raw:
    """A coordinator whose connection handler is `script(ws, n)` (n: the connection's number, from 1)."""

    def __init__(
        self, script: Callable[[web.WebSocketResponse, int], Awaitable[None]], close_wait: float = 10.0
    ) -> None:
        """`close_wait`: how long a close waits for the worker's own close frame before the connection is cut."""
        self.script, self.connections, self.close_wait = script, 0, close_wait
        self.received: list[dict[str, Any]] = []

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(timeout=self.close_wait)
        await ws.prepare(request)
        self.connections += 1
        await self.script(ws, self.connections)
        return ws

    async def read(self, ws: web.WebSocketResponse, answer: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                return
            data = json.loads(msg.data)
            if data["type"] != "load":
                self.received.append(data)
                await answer(data)


def _answers(ws: web.WebSocketResponse) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """An honest server's answers to releases and results."""

    async def answer(data: dict[str, Any]) -> None:
        if data["type"] == "release":
            await ws.send_json({"type": "released", "job": data["job"], "released": True})
        elif data["type"] == "result":
            await ws.send_json({"type": "ack", "job": data["job"], "recorded": True})
        elif data["type"] == "drain":
            await ws.send_json({"type": "draining", "running": []})

    return answer


async def _login(ws: web.WebSocketResponse, welcome: dict[str, Any] | None = None) -> None:
    await ws.send_json(CHALLENGE)
    await ws.receive_json()
    await ws.send_json(welcome or WELCOME)


# --- F1: messages that still end run() ------------------------------------------------------------------------


#: The worker's process runs in a child: on 08681fc it dies of SIGSEGV.
CHILD = """
import asyncio, sys, tempfile
from pathlib import Path
from tests.coordinator.test_hostile_server import FakeWorker
async def main():
    worker = FakeWorker(sys.argv[1], Path(tempfile.mkdtemp()))
    run = asyncio.create_task(worker.run())
    await asyncio.wait([run], timeout=float(sys.argv[2]))
    print("alive", run.done(), flush=True)
    worker.stop_now()
    await asyncio.wait([run], timeout=10)
asyncio.run(main())
"""


@pytest.mark.parametrize("where", ["challenge", "live"])
async def test_a_deeply_nested_message_does_not_kill_the_worker(serve: Any, tmp_path: Path, where: str) -> None:
    """One text frame of 65,500 '[' (under the worker's max_msg_size of 64 KiB). py_ecc (imported through
    eth_account) sets sys.setrecursionlimit(100000), so the C JSON scanner's RecursionError guard never trips before
    the 8 MiB C stack is gone: `json.loads` in `_login_message` / the receive loop (worker.py:481, :543) segfaults
    the whole worker process, before any login (`challenge`) or after it (`live`)."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if where == "live":
            await _login(ws)
        await ws.send_str("[" * 65500)
        async for _msg in ws:
            pass

    raw = Raw(script)
    url = await serve(raw)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, "3", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, f"the worker died: exit code {child.returncode}"
    assert "alive False" in out.decode(), out.decode()[-2000:]


async def test_a_huge_integer_heartbeat_does_not_end_run(serve: Any, tmp_path: Path) -> None:
    """`_welcome_problem` calls math.isnan on an int: an int over ~1e308 raises OverflowError (uncaught)."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws, {**WELCOME, "heartbeat": 10**400} if n == 1 else None)
        async for _msg in ws:
            pass

    raw = Raw(script)
    worker = FakeWorker(await serve(raw), tmp_path)
    run = asyncio.create_task(worker.run())
    try:  # an integer of any size is a number of seconds, kept within the bounds
        await _connected(worker, run)
    finally:
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


# --- F2: a refusal while a job's commitment is being sent --------------------------------------------------------


class CommittingWorker(FakeWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.committing: set[str] = set()

    def _committing(self, job_id: str) -> bool:
        return job_id in self.committing


async def test_an_admin_disconnect_waits_for_a_commitment_on_its_way(serve: Any, tmp_path: Path) -> None:
    """Close 4003 while a job's commitment is being sent (its secret written: `_committing` true): the reveal it
    will owe is no duty yet, so `_reveals_before_exit` sees nothing owed and run() raises at once, leaving the job
    to be cancelled as the process exits (`chain.run` ends the loop)."""
    kicked = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        await ws.send_json(_job("1:train:0"))
        await kicked.wait()
        await ws.close(code=4003, message=b"disconnected by an admin")

    raw = Raw(script)
    worker = CommittingWorker(await serve(raw), tmp_path)
    worker.committing.add("1:train:0")
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.started == ["1:train:0"], timeout=30, what="the job")
        kicked.set()
        await wait_until(lambda: run.done() or worker._refused is not None, timeout=30, what="the disconnect")
        assert not run.done(), "run() ended (WorkerRefused) while a job's commitment was on its way"
        worker.release_jobs.set()
        with pytest.raises(WorkerRefused, match="disconnected by an admin"):
            await asyncio.wait_for(run, 30)
        assert "1:train:0" in worker.done  # finished, not cancelled: its reveal is owed, and made before the exit
    finally:
        worker.release_jobs.set()
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


# --- F3: an honest server's job refused after it revoked a committing job ------------------------------------------


async def test_a_job_sent_after_a_committing_job_was_revoked_is_not_refused(serve: Any, tmp_path: Path) -> None:
    """dispatch.py `_pass`: an overdue job is dropped from the worker's slots and `revoked`; the next pass fills the
    slot. The worker finishes a revoked job whose commitment is being sent (`_stop_revoked` returns at once, and
    `_revoking` forgets it), so `busy` counts it again and the honest server's next job is released as
    'over capacity' — for a training job, the account's one delivery of that task."""
    go = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        await ws.send_json(_job("1:train:0"))
        await go.wait()
        await ws.send_json({"type": "revoked", "job": "1:train:0", "reason": "past its time limit"})
        await asyncio.sleep(0.5)  # the next dispatch pass
        await ws.send_json(_job("2:train:0", chain_task=2))
        await raw.read(ws, _answers(ws))

    raw = Raw(script)
    worker = CommittingWorker(await serve(raw), tmp_path, capacity=1)
    worker.committing.add("1:train:0")
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.started == ["1:train:0"], timeout=30, what="the first job")
        go.set()
        await wait_until(lambda: len(worker.started) == 2, timeout=30, what="the next job to start")
        assert worker.started == ["1:train:0", "2:train:0"]
        assert [m for m in raw.received if m["type"] == "release"] == []
    finally:
        worker.release_jobs.set()
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


# --- F4: memory a server can still make the worker hold --------------------------------------------------------


async def test_unanswered_releases_do_not_pile_up(serve: Any, tmp_path: Path) -> None:
    """Jobs over the capacity, never answered: every id stayed in `_releasing` for the life of the connection
    (2,000 ids of 60 KB each held 120 MB). A job id must now be one (`<task>:<kind>:<n>`), and a server leaving
    MAX_UNANSWERED_RELEASES releases unanswered is a broken one: its connection ends, and the worker logs in again."""
    many = 2000

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        if n == 1:
            await ws.send_json(_job("1:train:0"))
            for i in range(many):
                await ws.send_json(_job(f"{i}:" + "x" * 60_000))  # not a job id: skipped
            for i in range(2, many):
                with contextlib.suppress(ConnectionError):
                    await ws.send_json(_job(f"{i}:train:0", chain_task=i))
        async for _msg in ws:
            pass

    raw = Raw(script)
    worker = FakeWorker(await serve(raw), tmp_path, capacity=1)
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: raw.connections >= 2 or run.done(), timeout=60, what="the connection to end")
        assert not run.done()
        assert len(worker._releasing) <= MAX_UNANSWERED_RELEASES
        assert all(len(job) < 40 for job in worker._releasing)
    finally:
        worker.release_jobs.set()
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


async def test_retry_acks_do_not_multiply_result_sends(serve: Any, tmp_path: Path) -> None:
    """Each `ack` with `retry` spawns a task that sends the whole result again after RESULT_RETRY: 5000 of them
    for one result, 5000 tasks and 5000 copies of the result sent."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        await ws.send_json(_job("1:train:0"))

        async def answer(data: dict[str, Any]) -> None:
            if data["type"] == "result" and len(raw.received) == 1:
                for _ in range(5000):
                    await ws.send_json({"type": "ack", "job": data["job"], "retry": True})
                await ws.send_json({"type": "draining", "running": []})  # read after them: the test's marker

        await raw.read(ws, answer)

    raw = Raw(script)
    worker = FakeWorker(await serve(raw), tmp_path)
    worker.release_jobs.set()
    run = asyncio.create_task(worker.run())
    try:
        while (await asyncio.wait_for(worker.events.get(), 60))["event"] != "draining":
            pass
        assert len(worker._background) < 100, f"{len(worker._background)} background tasks"
    finally:
        worker.release_jobs.set()
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


# --- F5: a graceful stop a server still holds for good -----------------------------------------------------------


async def test_a_drain_ends_though_the_server_never_acknowledges_the_result(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DRAIN_ANSWER_WAIT bounds only the wait for `draining`: a server that answers the drain but never acks the
    result (nor answers a release) holds `run()` in `_check_drained` (`self.unacked`) for as long as it likes."""
    monkeypatch.setattr(worker_module, "DRAIN_ANSWER_WAIT", 0.5)
    monkeypatch.setattr(worker_module, "ANSWER_WAIT", 0.5)

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        await ws.send_json(_job("1:train:0"))

        async def answer(data: dict[str, Any]) -> None:
            if data["type"] == "drain":
                await ws.send_json({"type": "draining", "running": ["1:train:0"]})

        await raw.read(ws, answer)

    raw = Raw(script)
    worker = FakeWorker(await serve(raw), tmp_path)
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.started == ["1:train:0"], timeout=30, what="the job")
        worker.drain()
        worker.release_jobs.set()
        done, _ = await asyncio.wait([run], timeout=45)  # (DRAIN_ANSWER_WAIT's 30 s, and more)
        assert done, f"run() still waits: unacked={sorted(worker.unacked)}"
    finally:
        worker.release_jobs.set()
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


async def test_refused_with_reveals_owed_then_drained_still_says_refused(serve: Any, tmp_path: Path) -> None:
    """A first Ctrl-C while a refused worker waits for its reveals (`_reveals_before_exit`): drain() sees no
    connection and sets `_finished`, run() cancels the connection task holding the WorkerRefused and returns
    normally: `ethml worker` exits 0 and never says it was refused."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(CHALLENGE)
        await ws.receive_json()
        await ws.send_json({"type": "refused", "message": "go away"})
        await ws.close(code=4001)

    raw = Raw(script)
    worker = FakeWorker(await serve(raw), tmp_path)
    worker.owed = {7: asyncio.Event()}
    run = asyncio.create_task(worker.run())
    await wait_until(lambda: worker._refused is not None, timeout=30, what="the refusal")
    worker.drain()
    with pytest.raises(WorkerRefused):
        await asyncio.wait_for(run, 30)


# --- F6: an unstaked worker refused on a reconnect while a job runs -------------------------------------------------


class Unstaked(FakeWorker):
    """Job 1:train:0 finds the account unstaked (NotStaked); job 2:train:0 runs until `release_jobs`."""

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        if job["job"] == "1:train:0":
            raise TransactionReverted("commitSubmission", "not staked", error=Revert("NotStaked"), preflight=True)
        return await super()._execute(job)


async def test_an_unstaked_worker_refused_on_its_reconnect_still_ends(serve: Any, tmp_path: Path) -> None:
    """The honest server's own sequence: NotStaked drains the worker; its connection drops (a coordinator restart)
    while job 2 still runs; the login is refused (no stake). `_connect_loop`'s unstaked branch clears `unacked` and
    waits for `_finished`; job 2 then ends, its result goes into `unacked` (no connection to send it on) and nothing
    ever calls `_check_drained` again, which would find `unacked` non-empty anyway: run() never returns."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n >= 2:
            await ws.send_json(CHALLENGE)
            await ws.receive_json()
            await ws.send_json({"type": "refused", "message": "not staked"})
            await ws.close(code=4001)
            return
        await _login(ws)
        await ws.send_json(_job("2:train:0", chain_task=2))
        await ws.send_json(_job("1:train:0"))

        async def answer(data: dict[str, Any]) -> None:
            if data["type"] == "result":
                await ws.send_json({"type": "ack", "job": data["job"], "recorded": False, "failed": "requeued"})
            elif data["type"] == "drain":
                await ws.send_json({"type": "draining", "running": ["2:train:0"]})
                await ws.close()  # the coordinator restarts

        await raw.read(ws, answer)

    raw = Raw(script)
    worker = Unstaked(await serve(raw), tmp_path, capacity=2)
    run = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker._refused is not None, timeout=30, what="the refused reconnect")
        worker.release_jobs.set()
        done, _ = await asyncio.wait([run], timeout=20)
        assert done, f"run() still waits: running={sorted(worker.running)} unacked={sorted(worker.unacked)}"
        with pytest.raises(WorkerRefused, match="stopped taking jobs"):
            run.result()
    finally:
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


async def test_a_worker_refused_while_connected_ends_with_the_server_s_reason(serve: Any, tmp_path: Path) -> None:
    """The server refuses a connected worker whose stake is gone (`refused`, then a close with 4001): the worker
    ended saying only "(4001)". It ends with the reason the server gave, after one connection."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        await ws.send_json({"type": "refused", "message": "0xabc no longer holds a trainer stake in TrainingTasks"})
        await ws.close(code=4001)

    raw = Raw(script)
    worker = FakeWorker(await serve(raw), tmp_path)
    run = asyncio.create_task(worker.run())
    try:
        with pytest.raises(WorkerRefused, match="refused this worker: 0xabc no longer holds a trainer stake"):
            await asyncio.wait_for(run, 60)
        assert raw.connections == 1
    finally:
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)


@pytest.mark.parametrize("code", [4003, 4001])
async def test_a_close_the_worker_answers_too_late_still_tells_it_why(serve: Any, tmp_path: Path, code: int) -> None:
    """A server waits a moment for the worker's answer to its close, then cuts the connection (ethml serve: 0.2 s after
    a refusal, 2 s after other closes). A worker whose answer comes after the cut reads aiohttp's code for a failed
    answer (1006) in `close_code` (an outside review's client, busy for 3 s, did), and would go on reconnecting after
    an admin disconnected it (4003) or its stake was gone (4001); the worker takes the code from the close frame it
    received. (Here the worker answers in time: this checks the outcome of a server that cuts at once.)"""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await _login(ws)
        if code == 4001:
            await ws.send_json({"type": "refused", "message": "0xabc no longer holds a trainer stake in TrainingTasks"})
        await ws.close(code=code, message=b"closed")  # cut at once: the worker's answer comes too late

    raw = Raw(script, close_wait=0.0)
    worker = FakeWorker(await serve(raw), tmp_path)
    run = asyncio.create_task(worker.run())
    try:
        with pytest.raises(WorkerRefused, match="disconnected by an admin" if code == 4003 else "no longer holds"):
            await asyncio.wait_for(run, 60)
        assert raw.connections == 1
    finally:
        worker.stop_now()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)
