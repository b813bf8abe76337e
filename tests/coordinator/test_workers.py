"""Workers: who may log in, what an admin can do to them, and what happens to a job when its worker dies."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import aiohttp

from ethml.chain import dev_account
from ethml.coordinator.permit import sign_login
from tests.coordinator.conftest import Coordinator
from tests.coordinator.test_flow import post_wine_task, wait_status
from tests.node.conftest import wait_until


async def _login(c: Coordinator, message: Any, *, raw: bool = False) -> tuple[dict[str, Any], str]:
    """Connect, read the challenge, send `message` (a function of the challenge), return the answer."""
    async with aiohttp.ClientSession() as session, session.ws_connect(c.ws + "/ws/worker") as ws:
        challenge = await ws.receive_json(timeout=10)
        body = message(challenge)
        if raw:
            await ws.send_str(body)
        else:
            await ws.send_json(body)
        answer = await ws.receive_json(timeout=30)
        return answer, challenge["nonce"]


def _signed(account: int, role: str, *, claim: int | None = None, nonce: str | None = None) -> Any:
    def make(challenge: dict[str, Any]) -> dict[str, Any]:
        who = dev_account(account)
        return {
            "type": "auth",
            "role": role,
            "address": dev_account(claim if claim is not None else account).address,
            "signature": sign_login(who.key, challenge["server"], nonce or challenge["nonce"], role),
        }

    return make


async def test_only_staked_workers_with_their_own_fresh_signature_get_in(coordinator: Coordinator) -> None:
    c = coordinator
    welcome, first_nonce = await _login(c, _signed(5, "trainer"))
    assert welcome["type"] == "welcome" and welcome["address"] == dev_account(5).address
    refusals = [
        (lambda ch: "not json", True, "needs role, address and signature"),
        (lambda ch: {"type": "auth", "role": "trainer"}, False, "needs role, address and signature"),
        (lambda ch: {**_signed(5, "trainer")(ch), "role": "miner"}, False, "role must be trainer or validator"),
        (_signed(2, "trainer"), False, "holds no trainer stake"),  # unstaked
        (_signed(5, "validator"), False, "holds no validator stake"),  # staked, but as a trainer
        (_signed(2, "trainer", claim=5), False, "does not recover the address"),  # forged: another key
        (_signed(5, "trainer", nonce=first_nonce), False, "does not recover the address"),  # replayed
        (lambda ch: {**_signed(5, "trainer")(ch), "signature": "0x1234"}, False, "does not recover the address"),
    ]
    for make, raw, words in refusals:
        answer, _ = await _login(c, make, raw=raw)
        assert answer["type"] == "refused" and words in answer["message"], answer
    status, workers, _ = await c.api("GET", "/api/workers", key=c.admin_key)
    assert status == 200 and workers["workers"] == []  # the welcome one has left


async def test_an_admin_lists_and_disconnects_a_worker_and_an_unstaked_one_exits(coordinator: Coordinator) -> None:
    c = coordinator
    unstaked = c.start_worker("trainer", 2)
    assert await asyncio.to_thread(unstaked.wait, 90) == 1  # the server runs in this event loop
    assert "holds no trainer stake" in unstaked.log_path.read_text()  # type: ignore[attr-defined]
    proc = c.start_worker("validator", 7)

    async def listed() -> bool:
        _status, body, _ = await c.api("GET", "/api/workers", key=c.admin_key)
        return len(body["workers"]) == 1

    await wait_until(listed, timeout=90, what="the worker to appear")
    _status, body, _ = await c.api("GET", "/api/workers", key=c.admin_key)
    worker = body["workers"][0]
    assert (worker["address"], worker["role"], worker["capacity"]) == (dev_account(7).address, "validator", 1)
    status, reply, _ = await c.api("DELETE", f"/api/workers/{worker['id']}", key=c.admin_key)
    assert status == 202, reply
    assert await asyncio.to_thread(proc.wait, 60) == 1
    assert "disconnected by an admin" in proc.log_path.read_text()  # type: ignore[attr-defined]


async def test_a_killed_worker_s_job_goes_to_another_worker_once(coordinator: Coordinator) -> None:
    c = coordinator
    key = await c.requester_key()
    task_id, _ = await post_wine_task(c, key, trainers=1)
    await wait_status(c, task_id, "open", timeout=60)
    first = c.start_worker("trainer", 5)
    log = first.log_path  # type: ignore[attr-defined]

    async def started() -> bool:
        return "job_started" in log.read_text()

    await wait_until(started, timeout=120, what="the first trainer to take the job")
    first.send_signal(signal.SIGKILL)  # mid-job: training takes seconds, the submission comes at the end
    await asyncio.to_thread(first.wait, 10)
    killed_at = time.monotonic()
    second = c.start_worker("trainer", 6)
    store = c.store()

    async def recorded() -> bool:
        return await store.result("1:train:0") is not None

    await wait_until(recorded, timeout=180, what="the job's result")
    assert time.monotonic() - killed_at >= c.config().job_timeout - 1  # redelivered after the idle timeout
    result = await store.result("1:train:0")
    assert result is not None and result["ok"] and result["delivery"] == 2, result
    assert result["worker"].startswith(dev_account(6).address)
    assert await store.redis.xlen("ethml:dead") == 0
    doc = await wait_status(c, task_id, "training", timeout=60)
    assert [s["trainer"] for s in doc["submissions"]] == [dev_account(6).address]
    text = second.log_path.read_text()  # type: ignore[attr-defined]
    assert text.count("job_started") == 1 and "delivery=2" in text
    pending = await store.redis.xpending("ethml:jobs:trainer", "workers")
    assert pending["pending"] == 0  # acknowledged


class RawWorker:
    """A worker speaking the protocol by hand (to send what `ethml worker` never would), heartbeating
    in the background so the server keeps it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws, self.welcome = ws, welcome
        self.beat = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        with contextlib.suppress(ConnectionError):
            while not self.ws.closed:
                await self.ws.send_json({"type": "load", "cpu": 1.0, "memory": 1.0})
                await asyncio.sleep(0.5)

    async def next(self, kind: str, timeout: float = 60) -> dict[str, Any]:
        """The next message of type `kind` (jobs and acks arrive in order; nothing else is sent)."""
        while True:
            msg = await self.ws.receive_json(timeout=timeout)
            if msg["type"] == kind:
                return dict(msg)
            assert msg["type"] not in ("error", "refused"), msg

    async def result(self, job: str, delivery: int | None) -> dict[str, Any]:
        await self.ws.send_json({"type": "result", "job": job, "delivery": delivery, "ok": True, "detail": "done"})
        return await self.next("ack")

    async def close(self) -> None:
        self.beat.cancel()
        await self.ws.close()


async def _connect(session: aiohttp.ClientSession, c: Coordinator, account: int, role: str) -> RawWorker:
    ws = await session.ws_connect(c.ws + "/ws/worker")
    challenge = await ws.receive_json(timeout=10)
    await ws.send_json(_signed(account, role)(challenge))
    welcome = await ws.receive_json(timeout=30)
    assert welcome["type"] == "welcome", welcome
    return RawWorker(ws, welcome)


async def test_a_result_counts_only_from_the_worker_the_job_was_delivered_to(coordinator: Coordinator) -> None:
    """Forged results: a staked validator claims both training jobs of a task before the task exists; a
    trainer claims another trainer's job; the right trainer sends a result for a delivery it was not
    given. None counts, both jobs still reach trainers, and the real result does count."""
    c = coordinator
    store = c.store()
    async with aiohttp.ClientSession() as session:
        forger = await _connect(session, c, 7, "validator")
        for job in ("1:train:0", "1:train:1"):  # jobs of a task not created yet
            ack = await forger.result(job, 1)
            assert ack["recorded"] is False and "not delivered to this worker" in ack["refused"], ack
            assert await store.result(job) is None
        key = await c.requester_key()
        task_id, _ = await post_wine_task(c, key, trainers=2)
        await wait_status(c, task_id, "open", timeout=60)
        first = await _connect(session, c, 5, "trainer")
        job_a = await first.next("job")
        second = await _connect(session, c, 6, "trainer")
        job_b = await second.next("job")  # the forged results did not mark the jobs finished
        assert {job_a["job"], job_b["job"]} == {"1:train:0", "1:train:1"}
        assert job_a["delivery"] == job_b["delivery"] == 1
        refusals = [
            (second, job_a["job"], job_a["delivery"]),  # another trainer's job, with its delivery number
            (forger, job_a["job"], job_a["delivery"]),  # another role's job
            (first, job_a["job"], 2),  # the right worker, a delivery it was not given
            (first, job_a["job"], None),
        ]
        for who, job, delivery in refusals:
            ack = await who.result(job, delivery)
            assert ack["recorded"] is False and ack["refused"], (job, delivery, ack)
            assert await store.result(job) is None
        ack = await first.result(job_a["job"], job_a["delivery"])
        assert ack == {"type": "ack", "job": job_a["job"], "recorded": True}
        recorded = await store.result(job_a["job"])
        assert recorded is not None and recorded["worker"].startswith(dev_account(5).address)
        ack = await first.result(job_a["job"], job_a["delivery"])  # a repeat: acknowledged, not recorded
        assert ack["recorded"] is False
        for w in (forger, first, second):
            await w.close()
