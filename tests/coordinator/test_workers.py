"""Workers: who may log in, what an admin can do to them, and what happens to a job when its worker dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ethml.chain import dev_account, send
from ethml.coordinator import redis_keys as k
from ethml.coordinator.appkeys import CHAIN, DISPATCHER, STORE
from ethml.coordinator.permit import sign_login
from ethml.coordinator.redis_server import socket_path
from ethml.coordinator.routes import worker_socket
from ethml.coordinator.store import GROUP, WAITING
from ethml.coordinator.worker import worker_identity
from tests.coordinator.conftest import Coordinator, coordinator_on
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


async def _trainer_killed_mid_job(c: Coordinator) -> tuple[str, Path]:
    """A task for one trainer posted, and trainer 5 killed with -9 while it runs the task's training job (training
    takes seconds, the submission comes at the end). The task's id and the killed worker's log."""
    key = await c.requester_key()
    task_id, _ = await post_wine_task(c, key, trainers=1)
    await wait_status(c, task_id, "open", timeout=60)
    first = c.start_worker("trainer", 5)
    log: Path = first.log_path  # type: ignore[attr-defined]

    async def started() -> bool:
        return "job_started" in await asyncio.to_thread(log.read_text)

    await wait_until(started, timeout=120, what="the first trainer to take the job")
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 10)
    return task_id, log


async def test_a_killed_worker_s_job_goes_to_another_worker_once(coordinator: Coordinator) -> None:
    c = coordinator
    task_id, _log = await _trainer_killed_mid_job(c)
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


async def test_a_worker_killed_with_9_and_started_again_on_its_data_dir_gets_its_job_back(
    coordinator: Coordinator,
) -> None:
    """A worker keeps its id on its data dir: started again after `kill -9`, it logs in under the same id, the
    job it was running is sent to it again (the same delivery) and finished by the same account. With a new id
    per process, the job waited out the job timeout and could only go to another account (one delivery of a
    task's training jobs per account): with no other trainer, the task waited for good."""
    c = coordinator
    task_id, log = await _trainer_killed_mid_job(c)
    again = c.start_worker("trainer", 5, data=log.parent)
    store = c.store()

    async def recorded() -> bool:
        return await store.result("1:train:0") is not None

    await wait_until(recorded, timeout=180, what="the job's result")
    result = await store.result("1:train:0")
    assert result is not None and result["ok"] and result["delivery"] == 1, result
    ids = re.findall(r"\(id ([^)]+)\)", log.read_text())
    assert len(ids) == 2 and ids[0] == ids[1], ids  # the same id, from the data dir
    assert result["worker"] == f"{dev_account(5).address}:{ids[0]}", result
    doc = await wait_status(c, task_id, "training", timeout=60)
    assert [s["trainer"] for s in doc["submissions"]] == [dev_account(5).address]
    assert await store.redis.xlen("ethml:dead") == 0
    assert again.poll() is None


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

    async def release(self, job: str, delivery: int) -> dict[str, Any]:
        await self.ws.send_json({"type": "release", "job": job, "delivery": delivery})
        return await self.next("released")

    async def drain(self) -> dict[str, Any]:
        await self.ws.send_json({"type": "drain"})
        return await self.next("draining")

    async def close(self) -> None:
        self.beat.cancel()
        await self.ws.close()


async def _connect(
    session: aiohttp.ClientSession, c: Coordinator, account: int, role: str, worker_id: str | None = None
) -> RawWorker:
    ws = await session.ws_connect(c.ws + "/ws/worker")
    challenge = await ws.receive_json(timeout=10)
    login = _signed(account, role)(challenge)
    await ws.send_json({**login, "worker_id": worker_id} if worker_id else login)
    welcome = await ws.receive_json(timeout=30)
    assert welcome["type"] == "welcome", welcome
    return RawWorker(ws, welcome)


async def test_a_connected_workers_upload_token_lives_as_long_as_its_connection(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload token given at login lasts a day; a trainer connected for longer still uploads its models
    (the upload comes before its reveal), so the server renews the token on the worker's load reports, at
    most every TOKEN_RENEWAL seconds (here at each one). A token about to expire is given a day again while
    its worker reports."""
    c = coordinator
    store = c.store()
    monkeypatch.setattr(worker_socket, "TOKEN_RENEWAL", 0.0)
    async with aiohttp.ClientSession() as session:
        worker = await _connect(session, c, 5, "trainer")
        key = k.upload_token(worker.welcome["upload_token"])
        assert await store.redis.expire(key, 30)  # as if the day were nearly over

        async def renewed() -> bool:
            return int(await store.redis.ttl(key)) > 3600

        await wait_until(renewed, timeout=60, what="the token renewed on a load report")
        assert (await store.upload_token_owner(worker.welcome["upload_token"])) == dev_account(5).address
        await worker.close()


async def _commit(c: Coordinator, account: int, task: int) -> None:
    """Account `account` commits a submission to on-chain task `task` (what a trainer's result needs to count)."""
    chain = c.runners[0].app[CHAIN]
    await send(chain.w3, dev_account(account), chain.tasks.functions.commitSubmission(task, os.urandom(32)))


async def test_a_result_counts_only_from_the_worker_the_job_was_delivered_to(coordinator: Coordinator) -> None:
    """Forged results: a staked validator claims both training jobs of a task before the task exists; a
    trainer claims another trainer's job; the right trainer sends a result for a delivery it was not
    given; a trainer says it is done without committing on chain (answered `retry`: the job stays its own).
    None counts, both jobs still reach trainers, and the real result (after its commitment) does count, and
    adds to the account's record."""
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
        ack = await second.result(job_b["job"], job_b["delivery"])  # its word only: nothing committed
        assert ack["recorded"] is False and ack["retry"] is True, ack
        assert "no commitment of " + dev_account(6).address in ack["refused"], ack
        assert await store.result(job_b["job"]) is None
        assert await _pending(c, f"{dev_account(6).address}:{second.welcome['worker_id']}") == [
            (job_b["job"], f"{dev_account(6).address}:{second.welcome['worker_id']}", 1)
        ]
        await _commit(c, 5, job_a["chain_task"])
        ack = await first.result(job_a["job"], job_a["delivery"])
        assert ack == {"type": "ack", "job": job_a["job"], "recorded": True}
        recorded = await store.result(job_a["job"])
        assert recorded is not None and recorded["worker"].startswith(dev_account(5).address)
        ack = await first.result(job_a["job"], job_a["delivery"])  # a repeat: acknowledged, not recorded
        assert ack["recorded"] is False
        status, listed, _ = await c.api("GET", "/api/workers", key=c.admin_key)
        trained = {w["address"]: w.get("trained") for w in listed["workers"]}
        assert status == 200 and trained[dev_account(5).address] == 1 and trained[dev_account(6).address] == 0
        for w in (forger, first, second):
            await w.close()


async def test_a_job_lost_with_the_connection_is_sent_again_when_the_worker_reconnects(
    coordinator: Coordinator,
) -> None:
    """The job went out on a connection that then broke, and the worker never read it: when it reconnects
    under the same worker id, it keeps the job and is sent it again, as the same delivery, whose result
    counts (before, the job was held for it, untouched, until its time limit)."""
    c = coordinator
    async with aiohttp.ClientSession() as session:
        first = await _connect(session, c, 5, "trainer", worker_id="w-lost")
        key = await c.requester_key()
        task_id, _ = await post_wine_task(c, key, trainers=1)
        await wait_status(c, task_id, "open", timeout=60)
        dispatcher = c.runners[0].app[DISPATCHER]

        async def sent() -> bool:
            return dispatcher.dispatched == 1

        await wait_until(sent, timeout=60, what="the job to be sent")
        await first.close()  # its job message unread
        again = await _connect(session, c, 5, "trainer", worker_id="w-lost")
        assert again.welcome["running"] == ["1:train:0"]
        job = await again.next("job")
        assert (job["job"], job["delivery"]) == ("1:train:0", 1)
        await _commit(c, 5, job["chain_task"])
        ack = await again.result("1:train:0", 1)
        assert ack == {"type": "ack", "job": "1:train:0", "recorded": True}
        await again.close()


async def test_an_old_connection_ending_late_leaves_the_worker_s_record_from_another_instance(
    coordinator: Coordinator, monkeypatch: Any
) -> None:
    """A worker reconnects to instance b while instance a still holds its old connection (a has not seen it
    end yet); when a's connection ends, a's clean-up removes only its own record: b's, written at b's
    login, stays (before, it was deleted until the worker's next load report to b)."""
    c = coordinator
    socket = socket_path(c.root / "server" / "coordinator" / "redis")
    runner_b, url_b = await c.start_server(redis_url=f"unix://{socket}", data_dir=c.root / "second", relay=False)
    store_a, store_b = c.store(), c.store(runner_b)
    instance_b = runner_b.app[DISPATCHER].instance  # type: ignore[index]
    dropped = asyncio.Event()
    drop_worker = store_a.drop_worker

    async def drop_and_tell(*args: Any) -> Any:
        try:
            return await drop_worker(*args)
        finally:
            dropped.set()

    monkeypatch.setattr(store_a, "drop_worker", drop_and_tell)
    async with aiohttp.ClientSession() as session:
        old = await _connect(session, c, 5, "trainer", worker_id="w-moved")
        b = Coordinator(c.rpc, c.w3, c.deployment, c.deployment_file, c.root, url=url_b)
        new = await _connect(session, b, 5, "trainer", worker_id="w-moved")
        new.beat.cancel()  # no load report rewrites b's record while a cleans up
        assert [(w["id"], w["instance"]) for w in await store_b.workers()] == [("w-moved", instance_b)]
        await old.close()
        await asyncio.wait_for(dropped.wait(), timeout=30)
        assert [(w["id"], w["instance"]) for w in await store_b.workers()] == [("w-moved", instance_b)]
        assert all("session" not in w for w in await store_b.workers())
        await new.close()

        async def gone() -> bool:
            return await store_b.workers() == []

        await wait_until(gone, timeout=30, what="b to remove its own record")


async def test_a_worker_of_another_account_with_the_same_id_neither_takes_over_nor_locks_out(
    coordinator: Coordinator,
) -> None:
    """Worker ids are the workers' own choice and shown in /metrics. A staked worker of another account
    that logs in with a connected worker's id is a worker of its own: the first keeps its connection and
    gets its job (before, the newcomer took its place in dispatch and its jobs timed out), and it gets
    back in after a lost connection while the other holds the id (a refusal rule would have let any
    staked account lock it out). An admin's kick names the account when two use the id, and disconnects
    only that one. Two logins of the same worker at once leave one connection, the one in dispatch."""
    c = coordinator
    dispatcher = c.runners[0].app[DISPATCHER]  # type: ignore[index]
    five, six = dev_account(5).address, dev_account(6).address
    async with aiohttp.ClientSession() as session:
        victim = await _connect(session, c, 5, "trainer", worker_id="gpu-1")
        other = await _connect(session, c, 6, "trainer", worker_id="gpu-1")
        assert not victim.ws.closed

        async def both_in_dispatch() -> bool:  # (a login joins dispatch a step after its welcome)
            return sorted(dispatcher.conns) == sorted([f"{five}:gpu-1", f"{six}:gpu-1"])

        await wait_until(both_in_dispatch, timeout=30, what="both workers in dispatch")
        await victim.close()  # its connection is lost; it comes back under the same id
        victim = await _connect(session, c, 5, "trainer", worker_id="gpu-1")
        records = [(w["id"], w["address"]) for w in await c.store().workers()]
        assert sorted(records) == sorted([("gpu-1", five), ("gpu-1", six)])
        status, reply, _ = await c.api("DELETE", "/api/workers/gpu-1", key=c.admin_key)
        assert status == 409 and reply["error"]["field"] == "address" and five in reply["error"]["message"], reply
        assert not victim.ws.closed and not other.ws.closed
        status, reply, _ = await c.api("DELETE", f"/api/workers/gpu-1?address={six}", key=c.admin_key)
        assert status == 202 and reply == {"disconnected": "gpu-1", "workers": 1}, reply
        closed = await other.ws.receive(timeout=30)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closed
        key = await c.requester_key()
        task_id, _ = await post_wine_task(c, key, trainers=1)
        await wait_status(c, task_id, "open", timeout=60)
        job = await victim.next("job")
        assert job["job"] == "1:train:0"
        await victim.close()
        await other.close()
        twins = await asyncio.gather(*(_connect(session, c, 7, "validator", worker_id="twin") for _ in range(2)))
        reads = [asyncio.create_task(t.ws.receive()) for t in twins]  # nothing is sent to them but a close
        done, waiting = await asyncio.wait(reads, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and done.pop().result().type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        async def survivor_in_dispatch() -> bool:  # (it joins dispatch a step after the other's close)
            conn = dispatcher.conns.get(f"{dev_account(7).address}:twin")
            return conn is not None and conn.open

        await wait_until(survivor_in_dispatch, timeout=30, what="the surviving login in dispatch")
        assert not waiting.pop().done()  # the survivor's socket got no close
        for read in reads:
            read.cancel()
        for t in twins:
            await t.close()


async def test_a_dispatch_pass_during_a_login_sends_nothing_before_the_welcome(coordinator: Coordinator) -> None:
    """A pass that runs while a worker's login is still being answered (here: while its upload token is
    made) does not see the connection, so the job waiting for a trainer is not sent before the welcome
    (which a worker would take for its answer to the login); it goes out after it."""
    c = coordinator
    app = c.runners[0].app
    dispatcher, store = app[DISPATCHER], app[STORE]
    key = await c.requester_key()
    task_id, _ = await post_wine_task(c, key, trainers=1)
    await wait_status(c, task_id, "open", timeout=60)
    make_token = store.new_upload_token

    async def token_during_a_pass(address: str) -> str:
        await dispatcher.run_pass()
        return await make_token(address)

    store.new_upload_token = token_during_a_pass  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session:
        worker = await _connect(session, c, 5, "trainer")  # asserts that the first answer is the welcome
        store.new_upload_token = make_token  # type: ignore[method-assign]
        job = await worker.next("job")
        assert (job["job"], job["delivery"]) == ("1:train:0", 1)
        await worker.close()


TRAINER_JOBS = "ethml:jobs:trainer"


async def _pending(c: Coordinator, consumer: str | None = None) -> list[tuple[str, str, int]]:
    """(job, consumer, deliveries) of each pending training job, or of those under `consumer`."""
    redis = c.store().redis
    rows = await redis.xpending_range(
        TRAINER_JOBS, GROUP, "-", "+", 100, **({"consumername": consumer} if consumer else {})
    )
    out = []
    for row in rows:
        entry = await redis.xrange(TRAINER_JOBS, row["message_id"], row["message_id"])
        out.append((entry[0][1][b"job"].decode(), row["consumer"].decode(), int(row["times_delivered"])))
    return out


async def test_a_draining_worker_gets_no_new_job_and_a_released_job_goes_to_another_worker_at_once(
    anvil_url: str, tmp_path: Path
) -> None:
    """Stopping workers, by the protocol: a release binds to the worker and delivery like a result does
    (another trainer's, another role's or a wrong delivery's release moves nothing); a released job
    reaches another worker at once, with the job timeout at 600 s, and past max_deliveries waits for another
    account (a training job is never dead-lettered); a draining worker with free capacity is passed over by
    dispatch."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        await c.start_server(job_timeout=600.0, max_deliveries=2)
        dispatcher = c.runners[0].app[DISPATCHER]
        redis = c.store().redis
        key = await c.requester_key()
        async with aiohttp.ClientSession() as session:
            first = await _connect(session, c, 5, "trainer")
            task_id, _ = await post_wine_task(c, key, trainers=1)
            await wait_status(c, task_id, "open", timeout=60)
            job = await first.next("job")
            assert (job["job"], job["delivery"]) == ("1:train:0", 1)
            first_consumer = f"{dev_account(5).address}:{first.welcome['worker_id']}"
            second = await _connect(session, c, 6, "trainer")
            forger = await _connect(session, c, 7, "validator")
            for who, delivery in ((second, 1), (forger, 1), (first, 2)):
                answer = await who.release("1:train:0", delivery)
                assert answer["released"] is False and answer["refused"], answer
            assert await _pending(c) == [("1:train:0", first_consumer, 1)]  # nothing moved

            assert await first.drain() == {"type": "draining", "running": ["1:train:0"]}
            started = time.monotonic()
            assert await first.release("1:train:0", 1) == {"type": "released", "job": "1:train:0", "released": True}
            taken = await second.next("job", timeout=60)
            assert (taken["job"], taken["delivery"]) == ("1:train:0", 2)
            assert time.monotonic() - started < 60  # not the 600 s job timeout
            late = await first.result("1:train:0", 1)  # the abandoned delivery's result counts for nothing
            assert late["recorded"] is False and "not delivered" in late["refused"], late
            assert await c.store().result("1:train:0") is None

            # Handed back once more it has been delivered three times, more than max_deliveries: still
            # waiting, for an account that has not had it.
            assert (await second.release("1:train:0", 2))["released"] is True
            assert await _pending(c) == [("1:train:0", WAITING, 3)]
            assert await redis.xlen("ethml:dead") == 0
            await second.close()

            # The draining worker is free (nothing running, capacity 1) and the only trainer: a dispatch
            # pass with a job waiting passes it over.
            status, workers, _ = await c.api("GET", "/api/workers", key=c.admin_key)
            assert status == 200 and [w["draining"] for w in workers["workers"] if w["role"] == "trainer"] == [True]
            task_2, _ = await post_wine_task(c, key, trainers=1, nonce=1)
            await wait_status(c, task_2, "open", timeout=60)

            parked_jobs = [("1:train:0", WAITING, 3), ("2:train:0", WAITING, 1)]

            async def parked() -> bool:
                await dispatcher.run_pass()
                return await _pending(c, WAITING) == parked_jobs

            await wait_until(parked, timeout=60, what="the new job to wait for a worker")
            await dispatcher.run_pass()
            assert await _pending(c) == parked_jobs
            third = await _connect(session, c, 4, "trainer")
            taken = await third.next("job", timeout=60)
            assert (taken["job"], taken["delivery"]) == ("1:train:0", 3)  # the oldest job first
            for w in (first, forger, third):
                await w.close()


async def _logged(proc: Any, words: str, timeout: float = 120) -> None:
    log = proc.log_path

    async def seen() -> bool:
        assert proc.poll() is None or words in log.read_text(), log.read_text()
        return words in log.read_text()

    await wait_until(seen, timeout=timeout, what=f"{words!r} in the worker's log")


async def test_ctrl_c_finishes_the_job_and_a_second_ctrl_c_hands_it_to_another_worker_at_once(
    anvil_url: str, tmp_path: Path
) -> None:
    """`ethml worker` stopped by SIGINT mid-job: the first finishes and reports the job, then exits 0;
    the second (on another worker, another task) stops it now and exits 130, and a third worker trains
    the job as delivery 2 well before the 600 s job timeout would have handed it on."""
    async with coordinator_on(anvil_url, tmp_path) as c:
        await c.start_server(job_timeout=600.0)
        store = c.store()
        key = await c.requester_key()
        task_id, _ = await post_wine_task(c, key, trainers=1)
        await wait_status(c, task_id, "open", timeout=60)
        first = c.start_worker("trainer", 5)
        await _logged(first, "job_started")
        first.send_signal(signal.SIGINT)  # mid-job: training takes seconds, the submission comes at the end
        assert await asyncio.to_thread(first.wait, 180) == 0
        text = first.log_path.read_text()  # type: ignore[attr-defined]
        assert "stopping after its jobs (finishing 1:train:0)" in text, text
        result = await store.result("1:train:0")
        assert result is not None and result["ok"] and result["delivery"] == 1, result
        assert result["worker"].startswith(dev_account(5).address)
        assert await _pending(c) == []

        task_2, _ = await post_wine_task(c, key, trainers=1, nonce=1)
        await wait_status(c, task_2, "open", timeout=60)
        second = c.start_worker("trainer", 6)
        await _logged(second, "job_started")
        second.send_signal(signal.SIGINT)
        await _logged(second, "stopping after its jobs (finishing 2:train:0)")
        second.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(second.wait, 60) == 130
        stopped = time.monotonic()
        assert "stopping now (handing back 2:train:0)" in second.log_path.read_text()  # type: ignore[attr-defined]
        third = c.start_worker("trainer", 4)

        async def recorded() -> bool:
            return await store.result("2:train:0") is not None

        await wait_until(recorded, timeout=180, what="the handed-back job's result")
        assert time.monotonic() - stopped < 300
        result = await store.result("2:train:0")
        assert result is not None and result["ok"] and result["delivery"] == 2, result
        assert result["worker"].startswith(dev_account(4).address)
        doc = await wait_status(c, task_2, "training", timeout=60)
        assert [s["trainer"] for s in doc["submissions"]] == [dev_account(4).address]
        assert third.poll() is None


def test_a_worker_id_is_kept_per_data_dir_and_never_held_by_two_processes(tmp_path: Path) -> None:
    """The id is the first free slot's of the data dir, account and role, held with a lock while the worker runs:
    the same id again once released (or its process killed), another one while it is held, its own per account
    and role; a slot file that holds no valid id gets a new one; a data dir that cannot hold the files gives a
    fresh id for the process."""
    address, other = dev_account(5).address, dev_account(6).address
    with worker_identity(tmp_path, address, "trainer") as first:
        assert re.fullmatch(r"t0-[0-9a-f]{12}", first), first
        with worker_identity(tmp_path, address, "trainer") as second:
            assert second != first and second.startswith("t1-")
        with (
            worker_identity(tmp_path, address, "validator") as third,
            worker_identity(tmp_path, other, "trainer") as fourth,
        ):
            assert third.startswith("v0-") and fourth.startswith("t0-") and len({first, third, fourth}) == 3
    with worker_identity(tmp_path, address, "trainer") as again:
        assert again == first
    # Held by a process killed with -9: the kernel releases the lock with it.
    script = (
        "import sys, time; from pathlib import Path; from ethml.coordinator.worker import worker_identity\n"
        f"with worker_identity(Path({str(tmp_path)!r}), {address!r}, 'trainer') as i:\n"
        "    print(i, flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == first
        with worker_identity(tmp_path, address, "trainer") as meanwhile:
            assert meanwhile != first
    finally:
        holder.kill()
        holder.wait(30)
    with worker_identity(tmp_path, address, "trainer") as after:
        assert after == first
    (tmp_path / "worker" / f"{address.lower()}.trainer.0.id").write_text("not an id!\n")
    with worker_identity(tmp_path, address, "trainer") as fresh:
        assert fresh != first and fresh.startswith("t0-")
    blocked = tmp_path / "file"
    blocked.write_text("")
    with worker_identity(blocked, address, "trainer") as unkept:  # (a data dir that is a file)
        assert unkept.startswith("t") and unkept != fresh


def test_a_worker_id_file_is_never_read_or_written_through_a_link(tmp_path: Path) -> None:
    """A link planted in the data dir's worker folder was followed: its target was overwritten with an id, or an
    id in it adopted. Now such a slot is refused, and the worker takes a fresh id for the process."""
    address = dev_account(5).address
    victim = tmp_path / "precious"
    victim.write_text("precious data")
    (tmp_path / "data" / "worker").mkdir(parents=True)
    (tmp_path / "data" / "worker" / f"{address.lower()}.trainer.0.id").symlink_to(victim)
    with worker_identity(tmp_path / "data", address, "trainer") as worker_id:
        assert worker_id.startswith("t") and worker_id not in victim.read_text()
    assert victim.read_text() == "precious data"
