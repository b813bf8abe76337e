"""A long queue: jobs waiting for a worker are never reclaimed as if a worker had gone silent, however
many there are."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, TypeVar

import pytest

from ethml.coordinator import dispatch
from ethml.coordinator import redis_keys as k
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.store import GROUP, WAITING, Store
from ethml.training.spec import MAX_TRAIN_SECONDS
from tests.node.conftest import wait_until

STREAM = "ethml:jobs:trainer"


async def test_more_jobs_waiting_than_one_page_keep_their_first_delivery(
    redis_store: Store, monkeypatch: object
) -> None:
    """250 jobs wait with no worker connected, with pages of 100 and a 0.3 s job timeout: passes over
    more than four job timeouts reclaim none of them (before, those past the first page of 200 were
    reclaimed every timeout and dead-lettered after three, without ever running)."""
    monkeypatch.setattr(dispatch, "PAGE", 100, raising=False)  # type: ignore[attr-defined]
    store = redis_store
    redis = store.redis
    for n in range(250):
        fields = {"job": f"{n + 1}:train:0", "kind": "train", "task": f"t{n}", "chain_task": n + 1}
        await redis.xadd(STREAM, fields)  # type: ignore[arg-type]
    dispatcher = Dispatcher(store, "instance-1", job_timeout=0.3, max_deliveries=3)
    started = time.monotonic()
    passes = 0
    while time.monotonic() - started < 1.5 or passes < 5:
        await dispatcher.run_pass()
        passes += 1
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 1000)
    assert len(pending) == 250 and {p["consumer"] for p in pending} == {WAITING.encode()}
    assert {int(p["times_delivered"]) for p in pending} == {1}
    assert await redis.xlen("ethml:dead") == 0 and dispatcher.dead_lettered == 0


class RecordingSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    async def close(self, *, code: int, message: bytes) -> None:
        self.closed = True


async def test_a_worker_that_drains_while_a_job_is_being_assigned_to_it_is_not_sent_the_job(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain arrives during the awaits of an assignment (here: while the dispatcher asks whether the
    job has a result): the job is not sent (the worker may have been told no job follows) and goes
    back to waiting as it was, its delivery unspent, the worker's account free to take it later."""
    store = redis_store
    redis = store.redis
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    dispatcher, conn, ws = _draining_during_the_claim(store, monkeypatch, "0x" + "ab" * 20)
    await dispatcher.run_pass()
    assert ws.sent == [] and conn.running == {}
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(WAITING.encode(), 1)]
    assert await redis.smembers(k.task_workers(1, "trainer")) == set()


@pytest.mark.parametrize("before", ["no turn", "an earlier turn", "given elsewhere after the claim"])
async def test_a_worker_that_drains_during_the_claim_keeps_its_account_s_turn(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    """The drain arrives during the awaits of an assignment: the job goes back to waiting unsent, but the claim
    had stamped the account's turn, and the account went behind every account that stands alike, for a job it
    never got. The turn the claim stamped is taken back (to none, or to the account's earlier turn), unless
    another instance has given the account a job since (that turn stays)."""
    store = redis_store
    redis = store.redis
    account = "0x" + "ab" * 20
    await _training_job(store, 1)
    earlier = time.time() - 600
    if before == "an earlier turn":
        await redis.zadd(k.GIVEN, {account: earlier})
    dispatcher, conn, ws = _draining_during_the_claim(store, monkeypatch, account)
    elsewhere: list[float] = []
    if before == "given elsewhere after the claim":
        claim = store.claim_job

        async def given_elsewhere_after(*args: Any, **kwargs: Any) -> Any:
            claimed = await claim(*args, **kwargs)
            seconds, micros = await redis.time()
            elsewhere.append(seconds + micros / 1e6 + 1)  # another instance's claim, a moment later
            await redis.zadd(k.GIVEN, {account: elsewhere[0]})
            return claimed

        monkeypatch.setattr(store, "claim_job", given_elsewhere_after)
    await dispatcher.run_pass()
    assert ws.sent == [] and conn.running == {}
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(WAITING.encode(), 1)]
    turn = await redis.zscore(k.GIVEN, account)
    expected = {"no turn": None, "an earlier turn": earlier, "given elsewhere after the claim": (elsewhere or [0])[0]}
    assert turn == expected[before], f"the account's turn is {turn}, not {expected[before]}"


def _draining_during_the_claim(
    store: Store, monkeypatch: pytest.MonkeyPatch, account: str
) -> tuple[Dispatcher, dispatch.WorkerConn, RecordingSocket]:
    """An instance with one trainer of `account` connected, which drains during the next assignment's awaits
    (while the dispatcher asks whether the job has a result)."""
    dispatcher = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    ws = RecordingSocket()
    conn = dispatch.WorkerConn("w1", account, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    dispatcher.conns[conn.id] = conn
    _drains_at_the_next_claim(store, monkeypatch, conn)
    return dispatcher, conn, ws


def _drains_at_the_next_claim(store: Store, monkeypatch: pytest.MonkeyPatch, conn: dispatch.WorkerConn) -> None:
    """`conn` drains during the next assignment's awaits (while the dispatcher asks whether the job has a result)."""
    has_result = store.has_result

    async def asked_while_draining(job: str) -> bool:
        conn.draining = True  # the socket handler ran in between
        return await has_result(job)

    monkeypatch.setattr(store, "has_result", asked_while_draining)


SEAT, SEAT_VALIDATOR = "1:validate:0", "0x" + "e5" * 20


async def _seat_handed_back(store: Store) -> tuple[Dispatcher, dispatch.WorkerConn]:
    """Seat SEAT of SEAT_VALIDATOR, whose worker w1 on instance-1 had it and handed it back (delivery 2 waits):
    that instance, and w1 (no longer connected)."""
    await store.redis.set(k.task("v"), json.dumps({"status": "validating", "spec": {"max_train_seconds": 60}}))
    seat = {"job": SEAT, "kind": "validate", "task": "v", "chain_task": 1, "address": SEAT_VALIDATOR}
    await store.redis.xadd(k.jobs("validator"), seat)  # type: ignore[arg-type]
    dispatcher = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    w1 = _validator_worker(dispatcher, "w1")
    await dispatcher.run_pass()
    assert await dispatcher.release(w1, SEAT, 1) == "released"  # w1 stops: it hands the seat back
    del dispatcher.conns[w1.consumer]
    return dispatcher, w1


def _validator_worker(dispatcher: Dispatcher, worker_id: str) -> dispatch.WorkerConn:
    conn = dispatch.WorkerConn(worker_id, SEAT_VALIDATOR, "validator", RecordingSocket(), 4, dispatcher.instance)  # type: ignore[arg-type]
    dispatcher.conns[conn.consumer] = conn
    return conn


async def test_a_release_past_max_deliveries_of_a_deleted_entry_reports_it_gone(redis_store: Store) -> None:
    """RELEASE_JOB dead-letters a job past max_deliveries only if its entry is still there: one deleted
    meanwhile (finished elsewhere) is acknowledged and reported gone, nothing added to the dead stream."""
    store = redis_store
    redis = store.redis
    kept = await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    deleted = await redis.xadd(STREAM, {"job": "2:train:0", "kind": "train", "task": "u", "chain_task": 2})
    await redis.xreadgroup(GROUP, "worker-a", {STREAM: ">"})
    await redis.xdel(STREAM, deleted)
    assert await store.release_job("trainer", "worker-a", deleted, 1, 1, job="2:train:0") == "gone"
    assert await store.release_job("trainer", "worker-a", kept, 1, 1, job="1:train:0") == -2  # dead-lettered
    dead = await redis.xrange("ethml:dead")
    assert [(d[1][b"job"], d[1][b"deliveries"]) for d in dead] == [(b"1:train:0", b"2")]
    assert (dead[0][1][b"reason"], dead[0][1][b"worker"]) == (b"handed back", b"worker-a")
    assert await redis.xpending_range(STREAM, GROUP, "-", "+", 10) == []


async def test_a_dead_seat_says_why_it_died_and_whose_it_was(redis_store: Store) -> None:
    """A seat goes to the dead stream past --max-deliveries: its entry kept the job's fields and its count, but
    not why, so an operator reading the stream could not tell a validator gone silent from one that handed its
    seat back or failed its vote. The entry now says why (`reason`) and the worker that had it last (`worker`):
    a seat reclaimed from a silent validator (which `XAUTOCLAIM` does not say: the claim keeps it), one handed
    back by its worker as it stopped, and one whose vote failed (the worker's detail, bounded to 500
    characters)."""
    store = redis_store
    redis = store.redis
    await redis.set(k.task("v"), json.dumps({"status": "validating", "spec": {"max_train_seconds": 60}}))
    stream = k.jobs("validator")
    validators = ["e1" * 20, "e2" * 20, "e3" * 20]
    for n, validator in enumerate(validators):
        seat = {"job": f"1:validate:{n}", "kind": "validate", "task": "v", "chain_task": 1, "address": "0x" + validator}
        await redis.xadd(stream, seat)  # type: ignore[arg-type]
    dispatcher = Dispatcher(store, "instance-1", job_timeout=0.3, max_deliveries=1)
    for validator in validators:
        await _connect(dispatcher, validator, "validator")
    await dispatcher.run_pass()
    silent, stopping, failing = (dispatcher.conns[f"0x{v}:w"] for v in validators)
    assert all(c.running for c in (silent, stopping, failing))
    del dispatcher.conns[silent.consumer]  # it stops heartbeating: its seat goes idle
    assert await dispatcher.release(stopping, "1:validate:1", 1) == "released"  # dead: past one delivery
    # A failed vote is forgiven (it does not count toward the limit), so it ends a seat only under a limit lowered
    # since the seat was delivered: the instance restarted with --max-deliveries 0, its worker reconnected to it.
    dispatcher.max_deliveries = 0
    detail = {"error": "x" * 2000}
    assert await dispatcher.finish(failing, "1:validate:2", 1, {"ok": False, "detail": detail}) == "dead"

    async def reclaimed() -> bool:
        await dispatcher.run_pass()
        return bool(await redis.xlen(k.DEAD) == 3)

    await wait_until(reclaimed, timeout=60, what="the silent validator's seat in the dead stream")
    dead = {d[1][b"job"].decode(): d[1] for d in await redis.xrange(k.DEAD)}
    assert dead["1:validate:0"][b"reason"].decode().startswith("taken back from its last worker, silent for 0.3 s")
    assert dead["1:validate:0"][b"worker"] == silent.consumer.encode()  # (kept by the claim: XAUTOCLAIM does not say)
    assert dead["1:validate:1"][b"reason"] == b"handed back by its worker, which was stopping"
    assert dead["1:validate:1"][b"worker"] == stopping.consumer.encode()
    failed = dead["1:validate:2"][b"reason"].decode()
    assert failed.startswith('its worker failed it: {"error": "xxx') and len(failed) == 500, failed
    assert dead["1:validate:2"][b"worker"] == failing.consumer.encode()


async def test_a_dead_seat_never_names_a_worker_it_was_not_sent_to(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validator's worker w1 had its seat last and handed it back; w2 drained during the next claim, so the seat
    went back unsent, but the claim had written w2 as the seat's last worker. Spent while waiting (an instance
    restarted with a lower --max-deliveries), the seat went dead naming w2, which never had it. The claim's last
    worker is taken back with the claim now."""
    store = redis_store
    redis = store.redis
    dispatcher, w1 = await _seat_handed_back(store)
    w2 = _validator_worker(dispatcher, "w2")
    _drains_at_the_next_claim(store, monkeypatch, w2)
    await dispatcher.run_pass()
    monkeypatch.undo()
    pending = await redis.xpending_range(k.jobs("validator"), GROUP, "-", "+", 10)
    assert w2.running == {} and [(p["consumer"], p["times_delivered"]) for p in pending] == [(WAITING.encode(), 2)]
    restarted = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=1)
    await _connect(restarted, "e6" * 20, "validator")
    await restarted.run_pass()
    dead = {fields[b"job"].decode(): fields for _id, fields in await redis.xrange(k.DEAD)}
    assert dead[SEAT][b"worker"] == w1.consumer.encode()


async def test_a_seat_spent_while_waiting_is_not_said_to_have_a_silent_worker(redis_store: Store) -> None:
    """A seat handed back by its worker waits at its second delivery; the instance restarts with --max-deliveries 1,
    so the seat is spent before any worker gets it again. Its dead entry said "taken back from its last worker,
    silent for 30 s", which no worker was: it says now that it was spent while waiting, with its count and limit."""
    store = redis_store
    _first, w1 = await _seat_handed_back(store)
    restarted = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=1)
    _validator_worker(restarted, "w2")
    await restarted.run_pass()
    dead = {fields[b"job"].decode(): fields for _id, fields in await store.redis.xrange(k.DEAD)}
    assert dead[SEAT][b"reason"] == b"spent while waiting for a worker: delivered 1 time, its limit 1"
    assert dead[SEAT][b"worker"] == w1.consumer.encode() and restarted.dead_lettered == 1


async def test_a_claim_is_not_undone_for_a_worker_that_logged_in_again_elsewhere_meanwhile(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's connection to instance 1 ended during the claim, and the worker logged in to instance 2 right
    after it, whose login found the job pending under the worker and sent it again. Instance 1 then put the job back
    to waiting and took the account out of the task's set: the job went to another account as the same delivery
    while the first ran it. Nothing is undone when the worker's record names another connection now."""
    store = redis_store
    redis = store.redis
    account = "0x" + "ab" * 20
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}, "trainers": 2}))
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    first = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    ws = RecordingSocket()
    conn = dispatch.WorkerConn("w1", account, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    first.conns[conn.consumer] = conn
    await store.login_worker(conn.view(), 30, conn.role, dispatch.ADOPT_MOST)
    claim_job = store.claim_job

    async def then_logged_in_elsewhere(*args: Any, **kwargs: Any) -> Any:
        claimed = await claim_job(*args, **kwargs)
        ws.closed = True  # its connection here ended
        again = dispatch.WorkerConn("w1", account, "trainer", RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
        await store.login_worker(again.view(), 30, again.role, dispatch.ADOPT_MOST)  # (and that login adopts the job)
        return claimed

    monkeypatch.setattr(store, "claim_job", then_logged_in_elsewhere)
    await first.run_pass()
    assert ws.sent == []
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(conn.consumer.encode(), 1)]
    assert await redis.smembers(k.task_workers(1, "trainer")) == {account.encode()}


async def _left_for_another_instance(
    store: Store, role: str = "trainer"
) -> tuple[Dispatcher, dispatch.WorkerConn, Dispatcher]:
    """A job of `role` waits (training job 1:train:0, or the worker's account's seat 1:validate:0); worker w1's
    connection to instance 1 (which has not seen it end) and that instance, and instance 2, where the worker logs
    in next."""
    account = "0x" + "ab" * 20
    if role == "trainer":
        await store.redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}}))
        await store.redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    else:
        await store.redis.set(k.task("v"), json.dumps({"status": "validating", "spec": {"max_train_seconds": 60}}))
        seat = {"job": "1:validate:0", "kind": "validate", "task": "v", "chain_task": 1, "address": account}
        await store.redis.xadd(k.jobs("validator"), seat)  # type: ignore[arg-type]
    first = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    left = dispatch.WorkerConn("w1", account, role, RecordingSocket(), 1, "instance-1")  # type: ignore[arg-type]
    first.conns[left.consumer] = left
    await store.login_worker(left.view(), 30, left.role, dispatch.ADOPT_MOST)
    return first, left, Dispatcher(Store(store.redis), "instance-2", job_timeout=30, max_deliveries=3)


async def test_a_job_is_not_taken_for_a_connection_the_worker_left_for_another_instance(redis_store: Store) -> None:
    """The worker logged in to instance 2; instance 1 still held its old connection (not seen to end: a half-open
    socket lasts until the heartbeat timeout). Instance 1 took the next job for the old connection and sent it
    there: the worker never got it, its new connection had not adopted it (the job was taken after that login),
    and it came back only after the job timeout, one delivery later. The claim is refused now, the connection the
    worker left gets nothing more (it is not closed: a login the worker gave up on may pass for its latest for a
    moment, until it fails), and the job goes to the worker's new connection as delivery 1."""
    store = redis_store
    first, left, second = await _left_for_another_instance(store)
    new = dispatch.WorkerConn("w1", left.address, "trainer", RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
    await store.login_worker(
        new.view(), 30, new.role, dispatch.ADOPT_MOST
    )  # its login to instance 2, with nothing to adopt
    second.conns[new.consumer] = new
    await first.run_pass()
    await _sent_out(left)
    assert left.ws.sent == [] and left.running == {}  # type: ignore[attr-defined]
    assert left.open  # (not closed: a login the worker gave up on may pass for its latest for a moment)
    await second.run_pass()
    await _sent_out(new)
    assert _jobs(new.ws) == [("1:train:0", 1)]  # type: ignore[arg-type]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_job_taken_for_a_left_connection_around_the_login_is_adopted_or_refused(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Instance 1 takes the waiting job for the worker's old connection just before, or just after, the worker's
    login to instance 2. The login records its connection and reads the jobs pending under the worker in one
    step: taken before, the job is among them and adopted (sent again to the new connection, as delivery 1);
    after, the claim is refused and the job goes to the new connection. Recorded and read apart, a claim between
    the two was neither adopted nor refused, and the job came back only after the job timeout."""
    store = redis_store
    first, left, second = await _left_for_another_instance(store)
    new = dispatch.WorkerConn("w1", left.address, "trainer", RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
    login_worker = second.store.login_worker

    async def another_instance_dispatches_around_it(*args: Any) -> Any:
        if when == "before":
            await first.run_pass()
        entries = await login_worker(*args)
        if when == "after":
            await first.run_pass()
        return entries

    monkeypatch.setattr(second.store, "login_worker", another_instance_dispatches_around_it)
    resend = await second.take_over(new, 30)
    second.conns[new.consumer] = new
    if when == "before":
        assert [(m["job"], m["delivery"]) for m in resend] == [("1:train:0", 1)] and list(new.running) == ["1:train:0"]
    else:
        await _sent_out(left)
        assert resend == [] and left.ws.sent == []  # type: ignore[attr-defined]
        await second.run_pass()
        await _sent_out(new)
        assert _jobs(new.ws) == [("1:train:0", 1)]  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ["trainer", "validator"])
async def test_a_live_connection_whose_record_expired_is_still_the_worker_s_latest(
    redis_store: Store, role: str
) -> None:
    """The worker's record expires while its connection to instance 2 lives (a load report waits behind results
    whose chain checks are slow; any message keeps the connection, only a load report the record). The claims
    checked the record: instance 1 took the job (or the validator's seat) for the connection the worker had left,
    and the job came back one delivery later, which costs a seat one of its deliveries; a late load report of the
    left connection wrote its record again, and instance 2 then closed the live connection as replaced. The
    latest login is kept apart from the record now: the left connection's report is refused and it gets no job,
    and the live connection gets the job as delivery 1 and keeps its reports."""
    store = redis_store
    first, left, second = await _left_for_another_instance(store, role)
    job = "1:train:0" if role == "trainer" else "1:validate:0"
    new = dispatch.WorkerConn("w1", left.address, role, RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
    assert await second.take_over(new, 30) == []
    second.conns[new.consumer] = new
    await store.redis.delete(k.worker(new.consumer))  # expired
    assert not await store.put_worker(left.view(), 30)  # the left connection's late load report
    await first.run_pass()
    await _sent_out(left)
    assert left.ws.sent == []  # type: ignore[attr-defined]
    await second.run_pass()
    await _sent_out(new)
    assert _jobs(new.ws) == [(job, 1)] and new.open  # type: ignore[arg-type]
    assert await store.put_worker(new.view(), 30)  # its own load report


async def test_an_undo_for_a_left_connection_leaves_a_job_the_new_login_adopted_though_it_ended_since(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instance 1 took the job for the worker's connection there, which ended during the claim; the worker's login
    to instance 2 adopted the job (and was sent it as delivery 1), and that connection ended too, removing its
    record. The undo checked the record: finding none, it put the job back to waiting with delivery 1 unspent,
    and another account was sent delivery 1 of the same job. The latest login outlives its connection's record:
    nothing is undone, and the job comes back after the job timeout as the next delivery."""
    store = redis_store
    first, left, second = await _left_for_another_instance(store)
    new = dispatch.WorkerConn("w1", left.address, "trainer", RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
    claim_job = store.claim_job

    async def then_the_worker_moves_and_drops_again(*args: Any, **kwargs: Any) -> Any:
        claimed = await claim_job(*args, **kwargs)
        left.ws.closed = True  # type: ignore[attr-defined]  # its connection to instance 1 ended
        assert [m["delivery"] for m in await second.take_over(new, 30)] == [1]  # adopted, and sent again
        await second.store.drop_worker(new.consumer, new.session)  # that connection ended as well
        return claimed

    monkeypatch.setattr(store, "claim_job", then_the_worker_moves_and_drops_again)
    await first.run_pass()
    monkeypatch.undo()
    other = _validator_worker(second, "w9")  # (any other account's worker)
    other.role = "trainer"
    await second.run_pass()
    await _sent_out(other)
    assert other.ws.sent == []  # type: ignore[attr-defined]
    pending = await store.redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(left.consumer.encode(), 1)]


async def test_a_job_left_by_a_login_that_failed_after_its_step_goes_to_the_worker_s_next_login(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's login to instance 2 made its step (its session the latest, the pending jobs read) and then
    failed (its answer lost with Redis's connection: the worker is told `unavailable` and logs in again). The
    job instance 1 took for the connection the worker left, and could not undo for it, goes to the worker's next
    login, as the same delivery."""
    store = redis_store
    first, left, second = await _left_for_another_instance(store)
    claim_job = store.claim_job

    async def then_a_login_elsewhere_fails(*args: Any, **kwargs: Any) -> Any:
        claimed = await claim_job(*args, **kwargs)
        left.ws.closed = True  # type: ignore[attr-defined]
        failed = dispatch.WorkerConn("w1", left.address, "trainer", RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
        await second.store.login_worker(failed.view(), 30, "trainer", dispatch.ADOPT_MOST)  # (its answer lost)
        return claimed

    monkeypatch.setattr(store, "claim_job", then_a_login_elsewhere_fails)
    await first.run_pass()
    monkeypatch.undo()
    again = dispatch.WorkerConn("w1", left.address, "trainer", RecordingSocket(), 1, "instance-2")  # type: ignore[arg-type]
    assert [(m["job"], m["delivery"]) for m in await second.take_over(again, 30)] == [("1:train:0", 1)]


async def test_a_claim_undone_for_a_draining_worker_is_undone_in_one_step(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seat went back to waiting in one round trip and its last worker was restored in the next: another
    instance's pass in between claimed it for its own draining worker (noting the first claim's worker as the
    last), and undid that claim last, so the seat's last worker named a worker never sent it. The undo is one
    step now: the seat is not waiting until its last worker is restored."""
    store = redis_store
    redis = store.redis
    first, w1 = await _seat_handed_back(store)
    second = Dispatcher(Store(redis), "instance-2", job_timeout=30, max_deliveries=3)
    w2, w3 = _validator_worker(first, "w2"), _validator_worker(second, "w3")
    _drains_at_the_next_claim(first.store, monkeypatch, w2)
    _drains_at_the_next_claim(second.store, monkeypatch, w3)
    unclaim_first, unclaim_second = first.store.unclaim, second.store.unclaim
    held: dict[str, Any] = {}

    async def after_another_pass(*args: Any, **kwargs: Any) -> Any:
        held["undo"] = (args, kwargs)
        await second.run_pass()  # another instance's pass, before the first one's undo is done
        return None if held.get("done") else await unclaim_first(*args, **kwargs)

    async def after_the_first_undo(*args: Any, **kwargs: Any) -> Any:  # (the order that left the wrong worker)
        first_args, first_kwargs = held["undo"]
        await unclaim_first(*first_args, **first_kwargs)
        held["done"] = True
        return await unclaim_second(*args, **kwargs)

    monkeypatch.setattr(first.store, "unclaim", after_another_pass)
    monkeypatch.setattr(second.store, "unclaim", after_the_first_undo)
    await first.run_pass()
    assert w2.ws.sent == [] and w3.ws.sent == []  # type: ignore[attr-defined]
    assert await redis.get(k.job_worker(SEAT)) == w1.consumer.encode()


async def test_a_connected_worker_that_never_reports_loses_the_job_after_its_time_limit(redis_store: Store) -> None:
    """A worker can stay connected (it answers pings, it heartbeats) and never report: before, its job
    stayed fresh for as long as it stayed. Past the job's limit (the task's training time limit, 1 s
    here, plus the margin, 0.2 s) the job is no longer kept for it: it is reclaimed after the job
    timeout as delivery 2, reconnecting does not buy time, and its late result does not count. A
    validation job of the same task gets one limit per trainer and one more."""
    store = redis_store
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"spec": {"max_train_seconds": 1}, "trainers": 2}))
    dispatcher = Dispatcher(store, "instance-1", job_timeout=0.3, max_deliveries=3, job_margin=0.2)
    assert await dispatcher._time_limit({"task": "t", "kind": "validate"}) == 3.2
    assert await dispatcher._time_limit({"task": "imported", "kind": "train"}) == MAX_TRAIN_SECONDS + 0.2
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    ws = RecordingSocket()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    dispatcher.conns[conn.id] = conn
    await dispatcher.run_pass()
    await _sent_out(conn)
    assert len(ws.sent) == 1 and list(conn.running) == ["1:train:0"]
    deadline = conn.deadlines["1:train:0"]
    assert float(await redis.get(k.job_deadline("1:train:0"))) == deadline

    # The worker reconnects: it keeps the job with the deadline it was delivered with, and is sent the
    # job again as the same delivery (in case the first message was lost with the old connection).
    again = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    resend = await dispatcher.take_over(again, 30)
    dispatcher.conns[again.id] = again
    assert again.deadlines == {"1:train:0": deadline}
    assert resend == [json.loads(ws.sent[0])] and resend[0]["delivery"] == 1

    async def back_in_waiting() -> bool:
        await dispatcher.run_pass()
        pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
        return [(p["consumer"], p["times_delivered"]) for p in pending] == [(WAITING.encode(), 2)]

    await wait_until(back_in_waiting, timeout=30, what="the overdue job to go back to waiting")
    await _sent_out(again)
    assert again.running == {} and time.time() >= deadline
    # The worker was told, once, so it stops the job and its slot is free.
    revoked = [m for m in map(json.loads, ws.sent) if m["type"] == "revoked"]
    assert [m["job"] for m in revoked] == ["1:train:0"] and "time limit" in revoked[0]["reason"]
    # A worker that reconnects holding an overdue job is not sent it again.
    third = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    assert dispatcher.adopt(third, [dispatch.Pending("1:train:0", b"0-1", deadline, {})]) == []
    result = await dispatcher.finish(again, "1:train:0", 1, {"ok": True})
    assert result == "not delivered to this worker" and await store.result("1:train:0") is None


async def test_a_restarted_instance_gives_its_workers_the_job_timeout_to_come_back(redis_store: Store) -> None:
    """Found by an outside review: a server killed for longer than the job timeout took back, at its first pass
    after the restart, every job its workers held (idle in Redis since before the outage), before they could
    reconnect: their work was lost, and since an account gets one delivery of a task's training jobs, those
    accounts could never take them again. No job is taken back before the instance has run for the job
    timeout: a worker that comes back keeps its job, one that does not loses it then."""
    store = redis_store
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"spec": {"max_train_seconds": 600}, "trainers": 2}))
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    first = Dispatcher(store, "instance-1", job_timeout=0.5, max_deliveries=3)
    ws = RecordingSocket()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    first.conns[conn.consumer] = conn
    await first.run_pass()
    await _sent_out(conn)
    assert list(conn.running) == ["1:train:0"]

    async def holders() -> list[tuple[bytes, int]]:
        pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
        return [(p["consumer"], p["times_delivered"]) for p in pending]

    async def idle_past_the_timeout() -> bool:
        pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
        return bool(pending) and pending[0]["time_since_delivered"] >= 1000  # twice the job timeout

    # The instance is killed: nothing touches the job while it is down.
    await wait_until(idle_past_the_timeout, timeout=30, what="the job to idle past the job timeout")
    restarted = Dispatcher(store, "instance-1", job_timeout=0.5, max_deliveries=3)
    await restarted.run_pass()
    assert await holders() == [(conn.consumer.encode(), 1)]  # not taken back at the first pass
    again = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    await restarted.take_over(again, 30)
    restarted.conns[again.consumer] = again
    assert list(again.running) == ["1:train:0"]  # it came back in time: its job is its own
    await restarted.run_pass()  # (touched: fresh again)
    del restarted.conns[again.consumer]  # now it goes silent: it loses the job after the job timeout

    async def back_in_waiting() -> bool:
        await restarted.run_pass()
        return await holders() == [(WAITING.encode(), 2)]

    await wait_until(back_in_waiting, timeout=30, what="the silent worker's job to go back to waiting")


async def test_a_job_taken_back_from_a_connected_worker_is_revoked(redis_store: Store) -> None:
    """Another instance's XAUTOCLAIM (or any move) took the job from under a connected worker: the next
    pass forgets it and tells the worker, whose result would no longer count."""
    redis = redis_store.redis
    dispatcher, ws, conn = await _one_job_delivered(redis_store)
    assert [json.loads(m)["type"] for m in ws.sent] == ["job"]
    await redis.xclaim(STREAM, GROUP, WAITING, 0, [conn.running["1:train:0"]], justid=True)
    await dispatcher.run_pass()
    await _sent_out(conn)
    assert conn.running == {}
    messages = [json.loads(m) for m in ws.sent]
    assert [(m["type"], m["job"]) for m in messages] == [("job", "1:train:0"), ("revoked", "1:train:0")]
    assert "taken back" in messages[1]["reason"]


async def test_a_job_adopted_without_its_deadline_is_taken_back_and_not_sent_again(redis_store: Store) -> None:
    """The deadline key is gone from Redis (evicted): a worker that reconnects holding the job is not sent
    it again, and does not keep it (its welcome does not list it, so it stops the job), rather than
    keeping it fresh for as long as the worker stays."""
    redis = redis_store.redis
    dispatcher, ws, conn = await _one_job_delivered(redis_store)
    assert list(conn.running) == ["1:train:0"]
    await redis.delete(k.job_deadline("1:train:0"))
    again = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    assert await dispatcher.take_over(again, 30) == []
    assert again.running == {}
    dispatcher.conns[again.id] = again
    await dispatcher.run_pass()
    await _sent_out(again)
    assert again.running == {}
    assert [json.loads(m)["type"] for m in ws.sent] == ["job"]


async def _one_job_delivered(store: Store) -> tuple[Dispatcher, RecordingSocket, dispatch.WorkerConn]:
    """A dispatcher that has sent job 1:train:0 (a 60 s task) to its one connected trainer, `conn`, on `ws`."""
    await store.redis.set(k.task("t"), json.dumps({"spec": {"max_train_seconds": 60}, "trainers": 1}))
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    await store.redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    ws = RecordingSocket()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "instance-1")  # type: ignore[arg-type]
    dispatcher.conns[conn.id] = conn
    await dispatcher.run_pass()
    await _sent_out(conn)
    return dispatcher, ws, conn


class StuckSocket(RecordingSocket):
    """A worker that stopped reading: a send waits for buffer space that never comes."""

    async def send_str(self, data: str) -> None:
        await asyncio.Event().wait()


class Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_a_worker_that_stops_reading_does_not_hold_up_dispatch(redis_store: Store, monkeypatch: Any) -> None:
    """A staked worker that stops reading its socket (and keeps TCP alive with a zero window) made a send
    to it wait, and with it the dispatch pass, for every worker of the instance: for good at first,
    then for up to the send timeout per stalled connection. The pass no longer waits for any worker's
    send (each connection's messages leave from its own writer): with a send timeout far beyond the
    test, the pass ends and the next job reaches another worker while the stalled send still waits."""
    monkeypatch.setattr(dispatch, "SEND_TIMEOUT", 3600.0)
    redis = redis_store.redis
    await redis.set(k.task("t"), json.dumps({"spec": {"max_train_seconds": 60}, "trainers": 1}))
    dispatcher = Dispatcher(redis_store, "instance-1", job_timeout=600, max_deliveries=3)
    for n in (1, 2):
        await redis.xadd(STREAM, {"job": f"{n}:train:0", "kind": "train", "task": "t", "chain_task": n})
    stuck, transport = StuckSocket(), Transport()
    slow = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", stuck, 1, "i", transport=transport)  # type: ignore[arg-type]
    ws = RecordingSocket()
    good = dispatch.WorkerConn("w2", "0x" + "cd" * 20, "trainer", ws, 1, "i")  # type: ignore[arg-type]
    dispatcher.conns.update({slow.id: slow, good.id: good})
    await asyncio.wait_for(dispatcher.run_pass(), 60)
    await _sent_out(good)
    assert [json.loads(m)["job"] for m in ws.sent] == ["2:train:0"]
    assert list(slow.running) == ["1:train:0"] and not transport.aborted  # its job message still waits
    assert slow._writer is not None and not slow._writer.done()
    slow._writer.cancel()


async def test_a_worker_that_stops_reading_is_cut_off_after_the_send_timeout(monkeypatch: Any) -> None:
    """Past the send timeout the stalled connection is aborted; what was queued behind the stalled
    message, and what is posted later, is reported not sent (the jobs are left to the job timeout)."""
    monkeypatch.setattr(dispatch, "SEND_TIMEOUT", 0.2)
    transport = Transport()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", StuckSocket(), 1, "i", transport=transport)  # type: ignore[arg-type]
    behind = conn.post({"type": "job", "job": "2:train:0"})
    assert await asyncio.wait_for(conn.send({"type": "job", "job": "1:train:0"}), 30) is False
    assert transport.aborted and behind.done() and behind.result() is False
    later = conn.post({"type": "revoked", "job": "1:train:0"})
    assert later.done() and later.result() is False


async def test_messages_to_a_worker_leave_in_the_order_they_were_posted(monkeypatch: Any) -> None:
    """Jobs the dispatch pass posts without waiting, and the answers its socket handler waits for, leave
    one connection in one order (a drain's answer follows every job posted before it); a close goes
    after them, once however often it is asked for."""
    ws = SlowSocket()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 2, "i")  # type: ignore[arg-type]
    conn.post({"type": "job", "job": "1:train:0"})
    conn.post({"type": "job", "job": "2:train:0"})
    assert await conn.send({"type": "draining", "running": ["1:train:0", "2:train:0"]}) is True
    first, second = conn.post_close(4002, b"no heartbeat"), conn.post_close(4003, b"again")
    assert first is second
    await asyncio.wait_for(conn.close(4000, b"and again"), 30)
    assert [json.loads(m).get("job", "draining") for m in ws.sent] == ["1:train:0", "2:train:0", "draining"]
    assert ws.closes == [4002]


async def test_a_worker_whose_messages_wait_or_whose_close_is_queued_gets_no_new_job(
    redis_store: Store, monkeypatch: Any
) -> None:
    """A worker whose job message has waited more than BACKLOG to leave is not reading now, and one whose
    close is queued (an admin's kick, no heartbeat) is leaving: neither takes a new job, which goes to a
    worker that reads (before, each took jobs up to its capacity, held for it until the job timeout)."""
    monkeypatch.setattr(dispatch, "SEND_TIMEOUT", 3600.0)
    monkeypatch.setattr(dispatch, "BACKLOG", 0.05)
    redis = redis_store.redis
    await redis.set(k.task("t"), json.dumps({"spec": {"max_train_seconds": 60}, "trainers": 1}))
    dispatcher = Dispatcher(redis_store, "instance-1", job_timeout=600, max_deliveries=3)
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    slow = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", StuckSocket(), 4, "i", transport=Transport())  # type: ignore[arg-type]
    dispatcher.conns[slow.id] = slow
    await dispatcher.run_pass()
    assert list(slow.running) == ["1:train:0"] and not slow.backlogged  # it just went out, not yet waiting
    await wait_until(lambda: asyncio.sleep(0.01, slow.backlogged), timeout=30, what="the message to wait")
    leaving = dispatch.WorkerConn("w3", "0x" + "ef" * 20, "trainer", SlowSocket(), 4, "i")  # type: ignore[arg-type]
    leaving.post_close(4003, b"disconnected by an admin")
    assert not leaving.open and leaving.running == {}
    ws = RecordingSocket()
    good = dispatch.WorkerConn("w2", "0x" + "cd" * 20, "trainer", ws, 4, "i")  # type: ignore[arg-type]
    dispatcher.conns.update({leaving.id: leaving, good.id: good})
    for n in (2, 3):
        await redis.xadd(STREAM, {"job": f"{n}:train:0", "kind": "train", "task": "t", "chain_task": n})
    await dispatcher.run_pass()
    await _sent_out(good)
    assert [json.loads(m)["job"] for m in ws.sent] == ["2:train:0", "3:train:0"]
    assert list(slow.running) == ["1:train:0"] and leaving.running == {}
    assert slow._writer is not None
    slow._writer.cancel()


async def test_a_cancelled_close_leaves_later_closes_and_sends_working() -> None:
    """A caller of close() (or send()) that is cancelled while it waits does not cancel what it waited
    for: the message still leaves, and another caller's close() of the same connection returns."""
    ws = SlowSocket()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", ws, 1, "i")  # type: ignore[arg-type]
    sender = asyncio.create_task(conn.send({"type": "ack"}))
    closer = asyncio.create_task(conn.close(4003, b"disconnected by an admin"))
    await asyncio.sleep(0)
    sender.cancel()
    closer.cancel()
    await asyncio.wait_for(conn.close(4002, b"no heartbeat"), 30)  # before, CancelledError here
    assert [json.loads(m)["type"] for m in ws.sent] == ["ack"] and ws.closes == [4003]


async def test_an_older_connection_s_late_record_neither_replaces_nor_removes_the_newer_one(redis_store: Store) -> None:
    """The worker logged in again (a newer connection) while a load report of its older connection was
    still on its way: that report does not overwrite the newer record, and the older connection's end
    does not remove it (whatever the instances' clocks say). Another account's worker with the same id
    is another worker, with a record of its own; a kick by id reaches both, or one account's."""
    store = redis_store
    a, b = "0x" + "ab" * 20, "0x" + "cd" * 20
    older = dispatch.WorkerConn("w1", a, "trainer", RecordingSocket(), 1, "i1", connected_at=300.0)  # type: ignore[arg-type]
    newer = dispatch.WorkerConn("w1", a, "trainer", RecordingSocket(), 1, "i2", connected_at=200.0)  # type: ignore[arg-type]
    assert await store.login_worker(older.view(), 30, "trainer", dispatch.ADOPT_MOST) == []
    assert (
        await store.login_worker(newer.view(), 30, "trainer", dispatch.ADOPT_MOST) == []
    )  # the login of the newer connection
    assert not await store.put_worker(older.view(), 30)  # the late load report
    assert await store.drop_worker(older.consumer, older.session) is False
    assert [(w["id"], w["instance"]) for w in await store.workers()] == [("w1", "i2")]
    assert await store.put_worker(newer.view(), 30)  # its own record: updated
    other = dispatch.WorkerConn("w1", b, "trainer", RecordingSocket(), 1, "i3", connected_at=400.0)  # type: ignore[arg-type]
    assert await store.login_worker(other.view(), 30, "trainer", dispatch.ADOPT_MOST) == []
    assert [(w["address"], w["instance"]) for w in await store.workers()] == [(a, "i2"), (b, "i3")]
    assert await store.connections("w1", b.upper().replace("0X", "0x")) == {other.consumer: other.session}
    both = await store.connections("w1")
    assert both == {newer.consumer: newer.session, other.consumer: other.session}
    assert await store.connections("w2") == {}
    # A kick order is for the connection it names: the worker started again (a new session) is not kicked.
    await store.kick(both)
    assert not await store.take_kick(newer.consumer, older.session)
    assert await store.take_kick(newer.consumer, newer.session) and not await store.take_kick(
        newer.consumer, newer.session
    )
    assert await store.drop_worker(newer.consumer, newer.session) is True
    assert await store.drop_worker(other.consumer, other.session) is True
    assert await store.workers() == [] and await store.redis.smembers(k.WORKERS) == set()


class SlowSocket(RecordingSocket):
    """Each message takes a moment to leave (so a later one could overtake it, were they not queued)."""

    def __init__(self) -> None:
        super().__init__()
        self.closes: list[int] = []

    async def send_str(self, data: str) -> None:
        await asyncio.sleep(0.01)
        self.sent.append(data)

    async def close(self, *, code: int, message: bytes) -> None:
        await asyncio.sleep(0.01)
        self.closes.append(code)


async def _sent_out(conn: dispatch.WorkerConn) -> None:
    """Wait until what was posted to `conn` has left."""
    if conn._writer is not None:
        await asyncio.wait_for(asyncio.shield(conn._writer), 30)


class SharedDrainSocket(RecordingSocket):
    """A stalled socket as aiohttp has it: every sender waits on one shared drain future."""

    def __init__(self) -> None:
        super().__init__()
        self.drain: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send_str(self, data: str) -> None:
        await self.drain


async def test_a_send_whose_shared_drain_another_sender_s_timeout_cancelled_returns_false(monkeypatch: Any) -> None:
    """The connection's writer and another sender on the same socket (aiohttp's heartbeat ping) wait on a
    stalled connection; the other one's timeout cancels the drain future they share. The writer sees a
    CancelledError that is not its own: it reports the send failed and cuts the connection off instead
    of ending with the error (before the writer, in the dispatch pass, it ended the dispatcher for
    good)."""
    monkeypatch.setattr(dispatch, "SEND_TIMEOUT", 30.0)
    transport, socket = Transport(), SharedDrainSocket()
    conn = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "trainer", socket, 1, "i", transport=transport)  # type: ignore[arg-type]
    job = conn.post({"type": "job"})
    await asyncio.sleep(0)  # the writer waits on the drain
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(socket.drain, 0.3)  # the other sender gives up, cancelling the shared future
    assert await asyncio.wait_for(job, 30) is False
    assert transport.aborted
    assert conn._writer is not None and conn._writer.done() and not conn._writer.cancelled()


async def test_jobs_queued_for_an_import_that_a_posted_task_took_over_are_kept_for_the_posted_task(
    redis_store: Store,
) -> None:
    """A posted task took over the link of an imported one (which is failed, naming it): the validation job
    queued for the import (the same id the posted task's would have, so it is not queued again) is kept
    while its validator is away, because the task that tracks the chain task now is validating; and its
    time limit is the posted task's."""
    store = redis_store
    redis = store.redis
    posted = {"id": "posted", "status": "validating", "spec": {"max_train_seconds": 1}, "trainers": 2}
    await redis.set(k.task("posted"), json.dumps(posted))
    await redis.set(k.task("chain-1"), json.dumps({"id": "chain-1", "status": "failed", "trainers": 2}))
    await redis.set(k.chain_task(1), "posted")
    stream = k.jobs("validator")
    away = "0x" + "cd" * 20
    await redis.xadd(
        stream, {"job": "1:validate:0", "kind": "validate", "task": "chain-1", "chain_task": 1, "address": away}
    )
    dispatcher = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3, job_margin=0.2)
    assert await dispatcher._time_limit({"task": "chain-1", "chain_task": "1", "kind": "validate"}) == 3.2
    ws = RecordingSocket()
    other = dispatch.WorkerConn("w1", "0x" + "ab" * 20, "validator", ws, 1, "instance-1")  # type: ignore[arg-type]
    dispatcher.conns[other.id] = other
    for _ in range(3):
        await dispatcher.run_pass()
    pending = await redis.xpending_range(stream, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [WAITING.encode()], "kept for the drawn validator"
    assert ws.sent == [] and await redis.xlen(stream) == 1

    # The posted task took the link over and is not opened yet (its relay opens it): kept as well.
    await redis.set(k.task("posted"), json.dumps({**posted, "status": "pending_chain"}))
    await dispatcher.run_pass()
    assert await redis.xlen(stream) == 1

    # Once the task that tracks it is settled, the seat's vote is moot: the job is dropped.
    await redis.set(k.task("posted"), json.dumps({**posted, "status": "settled"}))
    await dispatcher.run_pass()
    assert await redis.xlen(stream) == 0


async def _connect(
    dispatcher: Dispatcher, account: str, role: str = "trainer", worker_id: str = "w"
) -> RecordingSocket:
    """A worker of `account` (40 hex digits) connected to `dispatcher`: its socket."""
    ws = RecordingSocket()
    conn = dispatch.WorkerConn(worker_id, "0x" + account, role, ws, 4, "instance-1")  # type: ignore[arg-type]
    dispatcher.conns[conn.consumer] = conn
    return ws


def _jobs(ws: RecordingSocket) -> list[tuple[str, int]]:
    return [(m["job"], m["delivery"]) for m in map(json.loads, ws.sent) if m["type"] == "job"]


async def test_accounts_that_fail_or_hand_back_training_jobs_cannot_wear_them_out(redis_store: Store) -> None:
    """A staked worker that answers every job it takes with ok: false (or a benign one's passing RPC error)
    ends no job: a failed result is handed back as a release is, for another account (the failing one has had
    its delivery of the task's training jobs), and no result is kept. Training jobs counted deliveries toward
    --max-deliveries like seats: trainers x max_deliveries staked accounts (6 here) failing or handing back
    each job they took sent both jobs of the task to the dead stream, and the honest trainers that connected
    next had nothing to train. A training job has no delivery limit now (it ends with its result, or when its
    task takes no more submissions): both jobs still wait, and the honest trainers record their results."""
    store = redis_store
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}, "trainers": 2}))
    for n in (0, 1):
        await redis.xadd(STREAM, {"job": f"1:train:{n}", "kind": "train", "task": "t", "chain_task": 1})
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    outcomes = []
    for n, account in enumerate(f"{n:x}{n:x}" * 20 for n in range(1, 7)):
        ws = await _connect(dispatcher, account)
        await dispatcher.run_pass()
        conn = dispatcher.conns[f"0x{account}:w"]
        await _sent_out(conn)
        [(job, delivery)] = _jobs(ws)
        if n % 2:
            outcomes.append(await dispatcher.release(conn, job, delivery))
        else:
            outcomes.append(await dispatcher.finish(conn, job, delivery, {"ok": False, "detail": "nope"}))
        assert await store.result(job) is None and conn.running == {}
        await dispatcher.run_pass()
        await _sent_out(conn)
        assert len(_jobs(ws)) == 1, "an account that failed a job takes none of the task's again"
    assert outcomes == ["requeued", "released"] * 3
    assert await redis.xlen(k.DEAD) == 0 and dispatcher.dead_lettered == 0
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [WAITING.encode()] * 2
    assert sum(int(p["times_delivered"]) - 1 for p in pending) == 6, "each attacker's delivery counted"
    for account in ("d4" * 20, "e5" * 20):
        honest = await _connect(dispatcher, account)
        await dispatcher.run_pass()
        conn = dispatcher.conns[f"0x{account}:w"]
        await _sent_out(conn)
        [(job, delivery)] = _jobs(honest)
        assert await dispatcher.finish(conn, job, delivery, {"ok": True}) == "recorded"
    assert [(await store.result(f"1:train:{n}") or {}).get("ok") for n in (0, 1)] == [True, True]
    assert await redis.xlen(STREAM) == 0


async def test_a_trainer_s_word_that_it_is_done_counts_only_with_its_commitment_on_chain(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staked account took a training job and answered ok: true without committing anything: the result
    was recorded, the job acknowledged and deleted, and the task got one submission fewer (two such accounts
    took a task's both jobs). A trainer's result now counts only once the chain shows the account's
    commitment to the task: until then it is answered `unproven` (the server's node may be a block behind
    the worker's) and the job stays the worker's, up to its time limit, then goes to the next account. The
    chain is asked only for a job pending under the worker with the delivery it names, and at most once per
    PROOF_EVERY per job, however often the result is sent."""
    monkeypatch.setattr(dispatch, "PROOF_EVERY", 0.3)
    store = redis_store
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}, "trainers": 1}))
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    on_chain: set[tuple[int, str]] = set()
    asked: list[tuple[int, str]] = []

    async def committed(task: int, account: str) -> bool:
        asked.append((task, account))
        return (task, account) in on_chain

    dispatcher = Dispatcher(store, "instance-1", job_timeout=0.5, max_deliveries=3, committed=committed)
    liar_ws = await _connect(dispatcher, "a1" * 20)
    liar = dispatcher.conns[f"0x{'a1' * 20}:w"]
    await dispatcher.run_pass()
    await _sent_out(liar)
    assert _jobs(liar_ws) == [("1:train:0", 1)]
    said = {"ok": True, "detail": "done"}
    assert await dispatcher.finish(liar, "1:train:0", 1, said) == dispatch.UNPROVEN
    assert await dispatcher.finish(liar, "1:train:0", 1, said) == dispatch.UNPROVEN  # at once again: not asked
    assert "not the delivery" in await dispatcher.finish(liar, "1:train:0", 7, said)  # a wrong one: not asked
    assert asked == [(1, "0x" + "a1" * 20)]
    assert await store.result("1:train:0") is None and "1:train:0" in liar.running
    assert await redis.zcard(k.trained(liar.address)) == 0

    liar.deadlines["1:train:0"] = time.time() - 1  # its time limit is over: taken back, for the next account
    honest_ws = await _connect(dispatcher, "b2" * 20)
    honest = dispatcher.conns[f"0x{'b2' * 20}:w"]

    async def delivered_again() -> bool:
        await dispatcher.run_pass()
        await _sent_out(honest)
        return _jobs(honest_ws) == [("1:train:0", 2)]

    await wait_until(delivered_again, timeout=60, what="the job to go to the next account")
    assert liar.running == {}
    assert await dispatcher.finish(liar, "1:train:0", 1, said) == "not delivered to this worker"
    asked.clear()
    assert await dispatcher.finish(honest, "1:train:0", 2, said) == dispatch.UNPROVEN  # its node is behind
    on_chain.add((1, "0x" + "b2" * 20))
    assert await dispatcher.finish(honest, "1:train:0", 2, said) == dispatch.UNPROVEN  # sent again too soon

    async def counted() -> bool:
        return await dispatcher.finish(honest, "1:train:0", 2, said) == "recorded"

    await wait_until(counted, timeout=60, what="the result to count once the commitment shows")
    assert asked == [(1, "0x" + "b2" * 20)] * 2
    assert (await store.result("1:train:0") or {}).get("worker") == honest.consumer
    assert await redis.zcard(k.trained(honest.address)) == 1


async def test_a_job_taken_back_while_the_chain_is_asked_for_its_commitment_is_not_recorded(
    redis_store: Store,
) -> None:
    """The result of a job near its time limit arrives; while the server asks the chain for the commitment, a
    dispatch pass takes the job back (and tells the worker). The chain's late yes no longer counts the
    result: the job is the next account's."""
    store = redis_store
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}}))
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    passing = asyncio.Event()
    dispatcher: Dispatcher

    async def committed(task: int, account: str) -> bool:
        conn.deadlines["1:train:0"] = time.time() - 1
        await dispatcher.run_pass()  # meanwhile: the job is overdue, and taken back
        passing.set()
        return True

    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3, committed=committed)
    ws = await _connect(dispatcher, "a1" * 20)
    conn = dispatcher.conns[f"0x{'a1' * 20}:w"]
    await dispatcher.run_pass()
    await _sent_out(conn)
    outcome = await dispatcher.finish(conn, "1:train:0", 1, {"ok": True})
    assert passing.is_set() and "not delivered to this worker any more" in outcome, outcome
    assert await store.result("1:train:0") is None and conn.running == {}
    await _sent_out(conn)
    assert [json.loads(m)["type"] for m in ws.sent] == ["job", "revoked"]


async def test_accounts_with_a_training_record_go_first_whatever_load_fresh_ones_claim(redis_store: Store) -> None:
    """Of the free workers that may take a training job, dispatch picked the least loaded by the load each
    worker reports itself: a fresh account claiming an idle machine was sent every new task's job first, and
    could fail it, or hold it to its time limit, before an honest trainer got it. Accounts with training
    results recorded this past day (each backed by a commitment on chain) now go first; a task that fails
    every trainer lowers no account's record."""
    store = redis_store
    redis = store.redis
    for n in (1, 2, 3):
        await redis.set(k.task(f"t{n}"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}}))
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    honest_ws = await _connect(dispatcher, "b2" * 20)
    honest = dispatcher.conns[f"0x{'b2' * 20}:w"]
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t1", "chain_task": 1})
    await dispatcher.run_pass()
    await _sent_out(honest)
    assert await dispatcher.finish(honest, "1:train:0", 1, {"ok": True}) == "recorded"
    assert await dispatcher.standing([honest.address.lower()]) == {honest.address.lower(): 1}
    assert 86000 < await redis.ttl(k.trained(honest.address)) <= dispatch.TRAINED_WINDOW
    honest.cpu, honest.memory = 90.0, 80.0  # busy, by its own report; the fresh account says it is idle
    sly_ws = await _connect(dispatcher, "a1" * 20)
    sly = dispatcher.conns[f"0x{'a1' * 20}:w"]

    await redis.xadd(STREAM, {"job": "2:train:0", "kind": "train", "task": "t2", "chain_task": 2})
    await dispatcher.run_pass()
    await _sent_out(honest)
    assert _jobs(honest_ws)[-1] == ("2:train:0", 1), "the next task's job went to the account with a record"
    # Task 2 fails every trainer (a poisoned task): the honest account's record is what it was.
    assert await dispatcher.finish(honest, "2:train:0", 1, {"ok": False, "detail": "cannot"}) == "requeued"
    await dispatcher.run_pass()
    await _sent_out(sly)
    assert _jobs(sly_ws) == [("2:train:0", 2)]  # the job goes on, to the account that has not had it
    assert await dispatcher.finish(sly, "2:train:0", 2, {"ok": False}) == "requeued"
    standing = await dispatcher.standing([honest.address.lower(), sly.address.lower()])
    assert standing == {honest.address.lower(): 1, sly.address.lower(): 0}

    await redis.xadd(STREAM, {"job": "3:train:0", "kind": "train", "task": "t3", "chain_task": 3})
    await dispatcher.run_pass()
    await _sent_out(honest)
    assert _jobs(honest_ws)[-1] == ("3:train:0", 1)
    assert [j for j, _ in _jobs(sly_ws)] == ["2:train:0"]


async def _proven(dispatcher: Dispatcher, account: str, results: int = 3) -> None:
    """`account` (0x...) has `results` training results recorded this past hour."""
    now = time.time()
    for n in range(results):
        await dispatcher.store.redis.zadd(k.trained(account), {f"{900 + n}:train:0": now - 3600 + n})


async def test_accounts_that_stand_alike_take_turns_whatever_load_they_claim(redis_store: Store) -> None:
    """Among accounts that stand alike (three results or more), the lowest load a worker reports decided:
    one claiming an idle machine (and capacity to spare) was sent every job first. The account given a
    training job least recently goes first now; the load decides only between an account's own workers."""
    store = redis_store
    redis = store.redis
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    accounts = {"a1" * 20: 0.0, "b2" * 20: 90.0}  # the load each reports
    for account, cpu in accounts.items():
        await _connect(dispatcher, account)
        dispatcher.conns[f"0x{account}:w"].cpu = cpu
        await _proven(dispatcher, "0x" + account, results=3 if cpu else 12)
    given = []
    for n in range(1, 5):
        await redis.set(k.task(f"t{n}"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}}))
        await redis.xadd(STREAM, {"job": f"{n}:train:0", "kind": "train", "task": f"t{n}", "chain_task": n})
        await dispatcher.run_pass()
        given += [c.address[2:4] for c in dispatcher.conns.values() if f"{n}:train:0" in c.running]
    assert given == ["a1", "b2", "a1", "b2"]


async def test_accounts_take_turns_across_instances_and_across_a_restart(redis_store: Store) -> None:
    """The turns were kept by each instance in its own memory: an account given a job by one instance was
    still first on another, and first again on every instance after a restart, so the account claiming the
    lowest load got the next job wherever it was dispatched. The turns are kept in Redis now, for the whole
    cluster: jobs dispatched by two instances and then by a restarted one go to the two accounts in turn."""
    store = redis_store
    accounts = {"a1" * 20: 0.0, "b2" * 20: 90.0}  # the load each reports
    first, second = _instance(store, "instance-1", accounts), _instance(store, "instance-2", accounts)
    restarted = _instance(store, "instance-1", accounts)
    for account in accounts:
        await _proven(first, "0x" + account)
    given = []
    for n, dispatcher in enumerate((first, second, first, restarted, second), start=1):
        await _training_job(store, n)
        await dispatcher.run_pass()
        given += _given(n, dispatcher)
    assert given == ["a1", "b2", "a1", "b2", "a1"]


async def test_two_instances_dispatching_at_once_give_an_account_one_turn(redis_store: Store) -> None:
    """Each pass read the turns at its start and stamped them after the job was sent: two instances
    dispatching at the same moment both gave the account whose turn it was a job. The claim now takes a
    training job only if the account was not given one since its pass read the turns, and stamps the turn
    in the same step: however the two passes interleave, each account gets one of the two jobs."""
    store = redis_store
    for trial in range(8):
        accounts = {f"a{trial}" * 20: 0.0, f"b{trial}" * 20: 90.0}
        first, second = _instance(store, "instance-1", accounts), _instance(store, "instance-2", accounts)
        for account in accounts:
            await _proven(first, "0x" + account)
        jobs = [100 * trial + 1, 100 * trial + 2]
        for n in jobs:
            await _training_job(store, n)
        await asyncio.gather(first.run_pass(), second.run_pass())
        await first.run_pass()  # a job one pass left waiting (its account's turn was taken meanwhile)
        given = sorted(a for n in jobs for d in (first, second) for a in _given(n, d))
        assert given == [f"a{trial}", f"b{trial}"], f"trial {trial}: {given}"


@pytest.mark.parametrize("meanwhile", ["its turn", "a job of the task"])
async def test_a_job_whose_account_is_refused_at_the_claim_goes_to_the_next_account_at_once(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """Between a pass's read of the turns and its claim, another instance gives the account whose turn it was a
    training job (of another task: its turn; or of this task, through another worker). The claim is refused, and
    the job waited for the next pass (half a second by default), though another account was free here. It now
    goes to the next account in the same pass."""
    store = redis_store
    redis = store.redis
    accounts = {"a1" * 20: 0.0, "b2" * 20: 90.0}  # a1 first: the lower load
    dispatcher = _instance(store, "instance-1", accounts)
    for account in accounts:
        await _proven(dispatcher, "0x" + account)
    await _training_job(store, 1)
    claim = store.claim_job
    elsewhere = [True]

    async def given_elsewhere_first(*args: Any, **kwargs: Any) -> Any:
        if elsewhere:  # just before this pass's first claim
            elsewhere.clear()
            if meanwhile == "its turn":  # another instance's claim stamped a1's turn (with Redis's clock)
                seconds, micros = await redis.time()
                await redis.zadd(k.GIVEN, {"0x" + "a1" * 20: seconds + micros / 1e6})
            else:  # another instance gave a1's other worker a job of the same task
                await redis.sadd(k.task_workers("1", "trainer"), "0x" + "a1" * 20)
        return await claim(*args, **kwargs)

    monkeypatch.setattr(store, "claim_job", given_elsewhere_first)
    await dispatcher.run_pass()
    assert _given(1, dispatcher) == ["b2"], "the job waited for the next pass"
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [f"0x{'b2' * 20}:instance-1".encode()]


async def test_an_account_given_its_turn_elsewhere_mid_pass_is_ranked_again_not_passed_over(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(An attack review of the change above.) An account refused because another instance gave it a job since
    the pass read its turn was dropped from the job's candidates: the job went to the next account, even one
    that ranks below it. A proven account lost the job to a fresh one with no results, while it was free here;
    and of two accounts that stand alike, the one given a job in this pass got the next job too, though the
    other's last job was older. The refused account is ranked again with the turn it has now."""
    store = redis_store
    redis = store.redis
    proven, fresh = "a1" * 20, "5b" * 20
    dispatcher = _instance(store, "instance-1", {proven: 0.0, fresh: 0.0})
    await _proven(dispatcher, "0x" + proven)
    await _training_job(store, 1)
    _given_elsewhere_before_the_first_claim(monkeypatch, store, "0x" + proven)
    await dispatcher.run_pass()
    assert _given(1, dispatcher) == ["a1"], "the proven account, free here, lost the job to one with no results"

    # Two that stand alike: a1's last job older than b2's; just before the pass's first claim, another instance
    # gives b2 a job. Job 2 goes to a1; job 3 then to b2, given one longer ago than a1 (this pass).
    alike = _instance(store, "instance-2", {"a2" * 20: 0.0, "b3" * 20: 0.0})
    for account in ("a2" * 20, "b3" * 20):
        await _proven(alike, "0x" + account)
    now = time.time()
    await redis.zadd(k.GIVEN, {"0x" + "a2" * 20: now - 1000, "0x" + "b3" * 20: now - 900})
    await _training_job(store, 2)
    await _training_job(store, 3)
    _given_elsewhere_before_the_first_claim(monkeypatch, store, "0x" + "b3" * 20)
    await alike.run_pass()
    assert (_given(2, alike), _given(3, alike)) == (["a2"], ["b3"]), "one account got both jobs of the pass"


def _given_elsewhere_before_the_first_claim(monkeypatch: pytest.MonkeyPatch, store: Store, account: str) -> None:
    """Just before the next claim, another instance gives `account` a training job (its turn stamped with Redis's
    clock, as CLAIM_JOB stamps it)."""
    claim = Store.claim_job
    elsewhere = [True]

    async def given_elsewhere_first(self: Store, *args: Any, **kwargs: Any) -> Any:
        if elsewhere:
            elsewhere.clear()
            seconds, micros = await self.redis.time()
            await self.redis.zadd(k.GIVEN, {account: seconds + micros / 1e6})
        return await claim(self, *args, **kwargs)

    monkeypatch.setattr(Store, "claim_job", given_elsewhere_first)


async def test_an_instance_whose_clock_is_slow_keeps_the_turns_in_order(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each instance stamped a turn with its own clock: an instance two minutes slow stamped its accounts
    as if they had had their turn long ago, and they went first again. Turns are stamped with Redis's
    clock now, one for every instance."""
    store = redis_store
    accounts = {"a1" * 20: 0.0, "b2" * 20: 90.0}
    first, second = _instance(store, "instance-1", accounts), _instance(store, "instance-2", accounts)
    for account in accounts:
        await _proven(first, "0x" + account)
    real = time.time
    given = []
    for n in range(1, 7):
        await _training_job(store, n)
        dispatcher = second if n % 2 == 0 else first
        with monkeypatch.context() as patch:
            if dispatcher is second:
                patch.setattr(dispatch.time, "time", lambda: real() - 120)
            await dispatcher.run_pass()
        given += _given(n, dispatcher)
    assert given == ["a1", "b2", "a1", "b2", "a1", "b2"]


def _instance(store: Store, name: str, accounts: dict[str, float]) -> Dispatcher:
    """An instance with one trainer of each account (40 hex digits) connected, reporting the load given."""
    dispatcher = Dispatcher(store, name, job_timeout=600, max_deliveries=3)
    for account, cpu in accounts.items():
        conn = dispatch.WorkerConn(name, "0x" + account, "trainer", RecordingSocket(), 4, name)  # type: ignore[arg-type]
        conn.cpu = cpu
        dispatcher.conns[conn.consumer] = conn
    return dispatcher


async def _training_job(store: Store, n: int) -> None:
    """Training job `n:train:0` of open task tn (on-chain task n) waiting."""
    await store.redis.set(k.task(f"t{n}"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}}))
    await store.redis.xadd(STREAM, {"job": f"{n}:train:0", "kind": "train", "task": f"t{n}", "chain_task": n})


def _given(n: int, dispatcher: Dispatcher) -> list[str]:
    """The first two hex digits of the account `dispatcher` gave job `n:train:0` to (none: empty)."""
    return [c.address[2:4] for c in dispatcher.conns.values() if f"{n}:train:0" in c.running]


async def test_an_account_s_standing_counts_only_this_past_day(redis_store: Store) -> None:
    """Each result set the count one higher and the key to expire a day later: one result a day kept every
    result since the first. Results older than a day are no longer counted."""
    store = redis_store
    redis = store.redis
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    account = "0x" + "a1" * 20
    now = time.time()
    await redis.zadd(k.trained(account), {"1:train:0": now - 3 * 86400, "2:train:0": now - 86500, "3:train:0": now})
    assert await dispatcher.standing([account]) == {account: 1}
    assert await redis.zcard(k.trained(account)) == 1  # trimmed as read


async def test_a_training_job_is_dropped_once_its_task_s_submit_deadline_is_past(redis_store: Store) -> None:
    """A task's document stays open (or training) past its submit deadline, until its test set is revealed or
    it settles, while the chain takes no commitment any more. A training job still waiting then (no limit on
    its deliveries) went to every account that had not had it, each failing at once: it is dropped now. The set
    of accounts that worked on a task, kept for good, expires once no job of it can be delivered."""
    store = redis_store
    redis = store.redis
    now = int(time.time())
    doc = {"status": "training", "spec": {"max_train_seconds": 60}, "submit_deadline": now - 60}
    await redis.set(k.task("late"), json.dumps({**doc, "reveal_deadline": now + 3600}))
    await redis.set(k.task("due"), json.dumps({**doc, "submit_deadline": now + 3600}))
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "late", "chain_task": 1})
    await redis.xadd(STREAM, {"job": "2:train:0", "kind": "train", "task": "due", "chain_task": 2})
    await redis.set(k.task("imported"), json.dumps({"status": "open", "submit_deadline": now + 100}))  # no spec
    await redis.xadd(STREAM, {"job": "3:train:0", "kind": "train", "task": "imported", "chain_task": 3})
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    ws = await _connect(dispatcher, "a1" * 20)
    await dispatcher.run_pass()
    await _sent_out(dispatcher.conns[f"0x{'a1' * 20}:w"])
    assert _jobs(ws) == [("2:train:0", 1), ("3:train:0", 1)]
    assert [row[1][b"job"] for row in await redis.xrange(STREAM)] == [b"2:train:0", b"3:train:0"]
    # The accounts that worked on the task are kept a day past its submit deadline (later than the job's own),
    # then they go: no job of the task is delivered any more.
    kept = await redis.ttl(k.task_workers(2, "trainer"))
    assert 86400 + 3500 < kept <= 86400 + 3600, kept


async def test_a_validator_s_failed_vote_goes_back_to_it_after_a_pause_however_often(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seat only its validator may take: after a failed result (a passing RPC error), the same validator is
    sent it again, as the next delivery, once a pause is over (SEAT_PAUSES, doubling). Failed votes do not count
    toward --max-deliveries: handed straight back, three of them within a second and a half dead-lettered the
    seat, and the validator lost its vote to an outage that short."""
    monkeypatch.setattr(dispatch, "SEAT_PAUSES", (1.5, 3.0))
    store = redis_store
    redis = store.redis
    await redis.set(k.task("v"), json.dumps({"status": "validating", "spec": {"max_train_seconds": 60}}))
    validator = "e5" * 20
    stream = k.jobs("validator")
    await redis.xadd(
        stream, {"job": "1:validate:0", "kind": "validate", "task": "v", "chain_task": 1, "address": "0x" + validator}
    )
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    ws = await _connect(dispatcher, validator, "validator")
    conn = dispatcher.conns[f"0x{validator}:w"]
    await dispatcher.run_pass()
    for delivery in range(1, 5):  # more failures than --max-deliveries
        failed = {"ok": False, "detail": "rpc down"}
        assert await dispatcher.finish(conn, "1:validate:0", delivery, failed) == "requeued"
        await dispatcher.run_pass()  # within the pause: not sent
        await _sent_out(conn)
        assert _jobs(ws)[-1] == ("1:validate:0", delivery)
        assert await redis.exists(k.job_pause("1:validate:0"))

        async def sent_again(expected: int = delivery + 1) -> bool:
            await dispatcher.run_pass()
            await _sent_out(conn)
            return _jobs(ws)[-1] == ("1:validate:0", expected)

        await wait_until(sent_again, timeout=60, what=f"delivery {delivery + 1} of the seat")
    assert _jobs(ws) == [("1:validate:0", n) for n in range(1, 6)]
    assert dispatcher.dead_lettered == 0 and await redis.xlen(k.DEAD) == 0


async def test_a_failed_vote_is_forgiven_in_the_step_that_hands_the_seat_back(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validator's seat was handed back twice (its worker restarted: deliveries 2 and 3), then its vote failed.
    The failure was forgiven a round trip after the seat went back to waiting: a dispatch pass in between (another
    instance's) read delivery 4 against a limit of 3 and dead-lettered the seat, as taken from a silent worker,
    though failed votes never count. The hand-back now forgives in the same step. And the count of forgiven
    failures is kept longer than any seat lives: it expired a day after the failure, and a seat waiting longer for
    its validator (a score period is up to 7 days, in up to 3 rounds) was then dead-lettered as spent."""
    monkeypatch.setattr(dispatch, "SEAT_PAUSES", (0.05, 0.05))
    store = redis_store
    redis = store.redis
    job, validator = "1:validate:0", "e5" * 20
    await redis.set(k.task("v"), json.dumps({"status": "validating", "spec": {"max_train_seconds": 60}}))
    seat = {"job": job, "kind": "validate", "task": "v", "chain_task": 1, "address": "0x" + validator}
    await redis.xadd(k.jobs("validator"), seat)  # type: ignore[arg-type]
    first = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    second = Dispatcher(store, "instance-2", job_timeout=30, max_deliveries=3)
    await _connect(first, validator, "validator")
    await _connect(second, "e6" * 20, "validator")  # a validator whose seat this is not
    conn = first.conns[f"0x{validator}:w"]
    await first.run_pass()
    for delivery in (1, 2):  # its worker restarts: it hands the seat back
        assert await first.release(conn, job, delivery) == "released"
        await first.run_pass()
        assert job in conn.running
    release_job = store.release_job

    async def then_another_pass(*args: Any, **kwargs: Any) -> Any:
        outcome = await release_job(*args, **kwargs)
        await second.run_pass()  # another instance's pass, right after the seat went back to waiting
        return outcome

    monkeypatch.setattr(store, "release_job", then_another_pass)
    assert await first.finish(conn, job, 3, {"ok": False, "detail": "rpc down"}) == "requeued"
    assert await redis.xlen(k.DEAD) == 0 and await redis.get(k.job_forgiven(job)) == b"1"

    async def delivered_again() -> bool:
        await first.run_pass()
        return job in conn.running

    await wait_until(delivered_again, timeout=60, what="the seat back with its validator after the pause")
    assert await redis.pttl(k.job_forgiven(job)) > 28 * 86400 * 1000  # the claim did not shorten it either


async def test_jobs_no_worker_here_may_take_hold_up_none_behind_them(redis_store: Store) -> None:
    """Only the first 200 waiting jobs were looked at: 210 training jobs of tasks the one connected trainer's
    account had worked on, and 210 seats of validators connected to no instance here, held up for good the
    job that trainer could take and the connected validator's own seat. Every waiting job is reached now
    (the front of the queue, and as much again from where the last pass stopped, going round), and a pass
    looks at a bounded number of them."""
    store = redis_store
    redis = store.redis
    trainer, validator = "ab" * 20, "ee" * 20
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}, "trainers": 1}))
    await redis.set(k.task("v"), json.dumps({"status": "validating", "spec": {"max_train_seconds": 60}}))
    seats = k.jobs("validator")
    for n in range(210):
        await redis.xadd(STREAM, {"job": f"{n + 1}:train:0", "kind": "train", "task": "t", "chain_task": n + 1})
        await redis.sadd(k.task_workers(n + 1, "trainer"), "0x" + trainer)
        away = "0x" + f"{n:04x}" * 10
        await redis.xadd(
            seats, {"job": f"{n + 1}:validate:0", "kind": "validate", "task": "v", "chain_task": n + 1, "address": away}
        )
    await redis.xadd(STREAM, {"job": "777:train:0", "kind": "train", "task": "t", "chain_task": 777})
    await redis.xadd(
        seats,
        {"job": "777:validate:0", "kind": "validate", "task": "v", "chain_task": 777, "address": "0x" + validator},
    )
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    trainer_ws = await _connect(dispatcher, trainer)
    validator_ws = await _connect(dispatcher, validator, "validator")
    looked_at: list[int] = []
    assign = dispatcher._assign

    async def counted(*args: Any) -> None:
        looked_at[-1] += 1
        await assign(*args)

    dispatcher._assign = counted  # type: ignore[method-assign]

    async def both_sent() -> bool:
        looked_at.append(0)
        await dispatcher.run_pass()
        return bool(dispatcher.conns[f"0x{trainer}:w"].running and dispatcher.conns[f"0x{validator}:w"].running)

    await wait_until(both_sent, timeout=60, what="the jobs behind the ones no worker here may take")
    for conn in dispatcher.conns.values():
        await _sent_out(conn)
    assert _jobs(trainer_ws) == [("777:train:0", 1)] and _jobs(validator_ws) == [("777:validate:0", 1)]
    assert max(looked_at) <= 2 * 2 * getattr(dispatch, "SCAN", 100)  # two roles, each the front and as much again
    assert await redis.xlen(STREAM) == 211 and await redis.xlen(seats) == 211  # still wanted: kept


async def test_training_jobs_of_a_task_past_its_submissions_are_dropped(redis_store: Store) -> None:
    """Training jobs its connected trainers had all worked on stayed in the queue for good, after their
    task stopped taking submissions (validating, settled): they are dropped when a pass comes to them."""
    store = redis_store
    redis = store.redis
    trainer = "ab" * 20
    for task, status in (("v", "validating"), ("s", "accepted"), ("o", "training")):
        await redis.set(k.task(task), json.dumps({"status": status, "spec": {"max_train_seconds": 60}, "trainers": 3}))
    chain_tasks = {"v": 1, "s": 2, "o": 3}
    for task, chain_task in chain_tasks.items():
        for n in range(3):
            await redis.xadd(
                STREAM, {"job": f"{chain_task}:train:{n}", "kind": "train", "task": task, "chain_task": chain_task}
            )
        await redis.sadd(k.task_workers(chain_task, "trainer"), "0x" + trainer)
    dispatcher = Dispatcher(store, "instance-1", job_timeout=600, max_deliveries=3)
    ws = await _connect(dispatcher, trainer)

    async def dropped() -> bool:
        await dispatcher.run_pass()
        return int(await redis.xlen(STREAM)) == 3

    await wait_until(dropped, timeout=60, what="the jobs no longer needed to be dropped")
    rows = await redis.xrange(STREAM)
    assert sorted(r[1][b"job"] for r in rows) == [b"3:train:0", b"3:train:1", b"3:train:2"]
    assert ws.sent == [] and await redis.xlen("ethml:dead") == 0
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["consumer"] for p in pending] == [WAITING.encode()] * 3


async def test_a_dead_worker_s_job_behind_many_live_ones_is_reclaimed(redis_store: Store) -> None:
    """XAUTOCLAIM scans at most ten pending entries per job it may take (1,000 here), and every pass started
    it from the front: with 1,100 jobs waiting ahead, the job of a worker that died was never taken back.
    The scan goes on across passes from the cursor Redis returns."""
    store = redis_store
    redis = store.redis
    pipe = redis.pipeline(transaction=False)
    for n in range(1100):
        pipe.xadd(STREAM, {"job": f"{n + 1}:train:0", "kind": "train", "task": f"t{n}", "chain_task": n + 1})
    await pipe.execute()
    await redis.xreadgroup(GROUP, WAITING, {STREAM: ">"}, count=2000)
    await redis.xadd(STREAM, {"job": "5000:train:0", "kind": "train", "task": "x", "chain_task": 5000})
    dead_worker = "0x" + "cd" * 20 + ":w"
    await redis.xreadgroup(GROUP, dead_worker, {STREAM: ">"}, count=1)  # delivered to it; then it died
    dispatcher = Dispatcher(store, "instance-1", job_timeout=1.0, max_deliveries=3)

    async def reclaimed() -> bool:
        await dispatcher.run_pass()
        return await redis.xpending_range(STREAM, GROUP, "-", "+", 10, consumername=dead_worker) == []

    await wait_until(reclaimed, timeout=60, what="the dead worker's job to be reclaimed")
    rows = await redis.xrevrange(STREAM, count=1)
    pending = await redis.xpending_range(STREAM, GROUP, rows[0][0], rows[0][0], 1)
    assert rows[0][1][b"job"] == b"5000:train:0"
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(WAITING.encode(), 2)]


class _Gate:
    """Another instance's Redis client, one of whose calls waits once until the test opens the gate."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self.reached, self.gate = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def _wait_once(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            await self.gate.wait()


class GatedRedis(_Gate):
    """Its first XRANGE (the first assignment of its pass, made from the waiting jobs it read) waits."""

    async def xrange(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait_once()
        return await self._redis.xrange(*args, **kwargs)


async def test_two_instances_never_both_deliver_a_job(redis_store: Store) -> None:
    """Instance 2 read the waiting jobs, then stalled (a slow Redis, a loaded host) while instance 1 sent
    the job to its worker; once instance 1's 5 s assignment lock had expired, instance 2 went on from what
    it had read and claimed the job from under instance 1's worker: one delivery, two workers. The claim
    takes the job only if it is still waiting, with the delivery count the pass saw."""
    redis = redis_store.redis
    first, second, gated = await _two_instances_one_job(redis_store, GatedRedis)
    ws_a, ws_b = await _connect(first, "ab" * 20), await _connect(second, "cd" * 20)
    stalled = asyncio.create_task(second.run_pass())
    await asyncio.wait_for(gated.reached.wait(), 60)  # it has read the job as waiting
    await first.run_pass()
    await redis.delete("ethml:joblock:1:train:0")  # the lock earlier versions took for 5 s, expired
    gated.gate.set()
    await asyncio.wait_for(stalled, 60)
    for d in (first, second):
        for conn in d.conns.values():
            await _sent_out(conn)
    assert _jobs(ws_a) == [("1:train:0", 1)] and _jobs(ws_b) == []
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(f"0x{'ab' * 20}:w".encode(), 1)]
    assert await redis.smembers(k.task_workers(1, "trainer")) == {f"0x{'ab' * 20}".encode()}


G = TypeVar("G", bound=_Gate)


async def _two_instances_one_job(store: Store, gate: type[G]) -> tuple[Dispatcher, Dispatcher, G]:
    """Training job 1:train:0 of open task t waiting, and two instances on the store's Redis, the second's client
    gated by `gate`."""
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 600}, "trainers": 2}))
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    await redis.xreadgroup(GROUP, WAITING, {STREAM: ">"}, count=100)
    other = Store(redis)
    gated = gate(redis)
    other.redis = gated  # type: ignore[assignment]
    first = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    second = Dispatcher(other, "instance-2", job_timeout=30, max_deliveries=3)
    return first, second, gated


class PageThenWait(_Gate):
    """Its first read of the waiting jobs (the page its pass keeps fresh) is answered, and then waits."""

    async def xpending_range(self, *args: Any, **kwargs: Any) -> Any:
        page = await self._redis.xpending_range(*args, **kwargs)
        if kwargs.get("consumername") == WAITING:
            await self._wait_once()
        return page


async def test_a_job_claimed_while_another_instance_keeps_the_queue_fresh_stays_with_its_worker(
    redis_store: Store,
) -> None:
    """Instance 2 read a page of waiting jobs to keep them fresh and, a round trip later, claimed them all back
    for the waiting consumer. Instance 1 had sent one of them to its worker in between: the job was taken back
    from under that worker (revoked) and sent to another account as the same delivery, and the first account
    had spent its one delivery of the task. Only the jobs still waiting are touched now."""
    redis = redis_store.redis
    first, second, paged = await _two_instances_one_job(redis_store, PageThenWait)  # (no worker on the second)
    ws_a = await _connect(first, "ab" * 20)
    keeping = asyncio.create_task(second.run_pass())
    await asyncio.wait_for(paged.reached.wait(), 60)  # it has read the job as waiting
    await first.run_pass()  # and the job goes to the worker of account ab
    paged.gate.set()
    await asyncio.wait_for(keeping, 60)
    ws_b = await _connect(first, "cd" * 20)
    await first.run_pass()
    for conn in first.conns.values():
        await _sent_out(conn)
    assert [json.loads(m)["type"] for m in ws_a.sent] == ["job"] and _jobs(ws_a) == [("1:train:0", 1)]
    assert _jobs(ws_b) == []
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(f"0x{'ab' * 20}:w".encode(), 1)]


async def test_an_overdue_job_is_not_kept_by_reconnecting(redis_store: Store) -> None:
    """Past its time limit a job's result no longer counts, but a worker that reconnected first kept the job
    (and was listed it as running), and its late result was recorded. An overdue job is not adopted: the
    late result is refused as on the old connection, and the job goes to another worker after the job
    timeout."""
    store = redis_store
    redis = store.redis
    await redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}, "trainers": 1}))
    dispatcher = Dispatcher(store, "instance-1", job_timeout=0.3, max_deliveries=3)
    await redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})
    await _connect(dispatcher, "ab" * 20, worker_id="w1")
    await dispatcher.run_pass()
    old = dispatcher.conns.pop(f"0x{'ab' * 20}:w1")  # its connection is lost
    assert list(old.running) == ["1:train:0"]
    await redis.set(k.job_deadline("1:train:0"), repr(time.time() - 1))  # as if its time limit had passed
    again = dispatch.WorkerConn("w1", old.address, "trainer", RecordingSocket(), 4, "instance-1")  # type: ignore[arg-type]
    assert await dispatcher.take_over(again, 30) == []
    dispatcher.conns[again.consumer] = again
    assert again.running == {}  # the welcome lists no job: the worker stops it
    late = await dispatcher.finish(again, "1:train:0", 1, {"ok": True})
    assert late == "not delivered to this worker" and await store.result("1:train:0") is None
    other = await _connect(dispatcher, "cd" * 20)

    async def handed_on() -> bool:
        await dispatcher.run_pass()
        return bool(_jobs(other))

    await wait_until(handed_on, timeout=60, what="the overdue job to go to another worker")
    assert _jobs(other) == [("1:train:0", 2)]


@pytest.mark.parametrize("node", ["answers", "errs", "hangs", "unreachable", "answers 0x", "reverts"])
async def test_the_servers_commitment_check_tells_when_the_node_does_not(
    node: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commitment check ran in the worker's socket handler with no limit of its own (the RPC client's 30 s,
    past the 15 s heartbeat timeout), and a node's error or timeout ended the honest worker's connection as
    `unavailable`. It answers None now (not known: the result is answered retry)."""
    from web3.exceptions import BadFunctionCallOutput, ContractLogicError, Web3RPCError

    from ethml.coordinator import server

    monkeypatch.setattr(server, "PROOF_TIMEOUT", 0.2)

    async def call() -> int:
        if node == "errs":
            raise Web3RPCError("header not found")
        if node == "unreachable":
            raise ConnectionRefusedError("connection refused")
        if node == "answers 0x":  # an unsynced node behind a load balancer
            raise BadFunctionCallOutput("Could not decode contract function call to submissionOf")
        if node == "reverts":
            raise ContractLogicError("execution reverted")
        if node == "hangs":
            await asyncio.sleep(30)
        return 2

    class Functions:
        def submissionOf(self, task: int, account: str) -> Any:
            assert (task, account) == (1, "0x" + "a1" * 20)
            return type("Call", (), {"call": staticmethod(call)})()

    chain = type("Chain", (), {"tasks": type("Tasks", (), {"functions": Functions()})()})()
    started = time.monotonic()
    shown = await server._committed(chain, 1, "0x" + "a1" * 20)  # type: ignore[arg-type]
    assert shown is (True if node == "answers" else None)
    assert time.monotonic() - started < 10
