"""Background loops stop when told: stopping a helper task never swallows the caller's own cancellation
(a relayer that swallowed it kept relaying after its server shut down), and a loop whose cancel Python
3.11 dropped inside a Redis command stops all the same."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest

from ethml.coordinator import follower as follower_module
from ethml.coordinator import leader as leader_module
from ethml.coordinator.background import Loops, forever, stop_helper
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.lease import RENEW, LeaseLapsed, Lock, check_held
from ethml.coordinator.store import Store
from tests.node.conftest import wait_until


async def test_a_caller_cancelled_while_stopping_its_helper_is_still_cancelled() -> None:
    helper_stopping = asyncio.Event()

    async def helper() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            helper_stopping.set()
            await asyncio.sleep(0.2)  # a helper that takes a moment to wind down
            raise

    async def caller() -> str:
        task = asyncio.create_task(helper())
        await asyncio.sleep(0)
        await stop_helper(task)
        return "carried on"  # what a swallowed cancellation would lead to

    running = asyncio.create_task(caller())
    await asyncio.wait_for(helper_stopping.wait(), 10)
    running.cancel()  # while the caller waits for its helper
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)


async def test_a_helper_that_failed_is_stopped_quietly_and_loops_stop_together() -> None:
    async def broken() -> None:
        raise RuntimeError("the helper's own trouble")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await stop_helper(task)  # does not raise
    loops = Loops()
    loops.start("a", asyncio.Event().wait())  # type: ignore[arg-type]
    loops.start("b", asyncio.sleep(3600))  # type: ignore[arg-type]
    await asyncio.wait_for(loops.stop(grace=5), 10)
    assert loops.tasks == []


async def test_a_loop_busy_on_redis_stops_at_the_first_shutdown_whenever_it_is_cancelled(redis_store: Store) -> None:
    """Python 3.11's asyncio.wait_for drops a cancel that arrives as the write it waits for completes,
    and redis-py 8 sends every command through it: a dispatch loop stopped mid-command carried on, and
    `ethml serve` logged shutdown_stuck after waiting 10 s for it. Cancelled at random moments while it
    and other clients keep Redis busy, the loop now ends every time, within the grace."""
    store = redis_store
    redis = store.redis
    dispatcher = Dispatcher(store, "instance-1", job_timeout=30, max_deliveries=3)
    finished = asyncio.Event()

    async def traffic() -> None:  # other clients of the same pool: the API's requests
        while not finished.is_set():
            await asyncio.gather(*(store.take_token([(f"bucket-{i}", 100.0, 1000)]) for i in range(20)))
            await redis.get("anything")

    others = [asyncio.create_task(traffic()) for _ in range(3)]
    draw = random.Random(19)
    try:
        for run in range(40):
            loops = Loops()
            loops.start("dispatch", forever("dispatch", 0.0, dispatcher.run_pass))
            task = loops.tasks[0]
            await asyncio.sleep(draw.random() * 0.05)
            await asyncio.wait_for(loops.stop(grace=5), 30)
            assert task.done(), f"run {run}: the loop outlived its shutdown"
    finally:
        finished.set()
        await asyncio.gather(*others, return_exceptions=True)


async def test_the_leader_lease_is_held_through_a_pass_longer_than_its_ttl(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper waits for a receipt per transaction (a block or more): a leader's pass may take longer than
    the lease's ttl. The lease was renewed only between passes, so a second instance took it mid-pass and
    followed and kept at the same time as the first. Now it is renewed while the pass runs."""
    inside: list[str] = []
    release = asyncio.Event()

    async def follow(chain: Any, _store: Store, _confirmations: int) -> int:
        inside.append(chain.name)
        if chain.name == "first":
            await release.wait()
        return 0

    async def keep(_chain: Any, _store: Store) -> None:
        return None

    monkeypatch.setattr(leader_module, "follow", follow)
    monkeypatch.setattr(leader_module, "keep_deadlines", keep)
    metrics = SimpleNamespace(chain_lag=SimpleNamespace(set=lambda _value: None))
    first, second = (
        leader_module.Leader(SimpleNamespace(name=name, head=None, confirmations=0), redis_store, metrics)  # type: ignore[arg-type]
        for name in ("first", "second")
    )
    first.lease.ttl = second.lease.ttl = 2.0  # renewed every 0.67 s
    passing = asyncio.create_task(first.step())
    await wait_until(lambda: _true("first" in inside), timeout=30, what="the first leader's pass")
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5 * first.lease.ttl  # the lease would have lapsed twice over
    while loop.time() < until:
        await second.step()
        assert inside == ["first"], "a second leader ran beside the first"
        await asyncio.sleep(0.1)
    release.set()
    await asyncio.wait_for(passing, 30)
    await first.lease.release()  # the first instance is gone: the second leads at once
    await second.step()
    assert inside == ["first", "second"]


async def _true(value: bool) -> bool:
    return value


async def test_a_holder_whose_lease_another_instance_took_is_stopped(redis_store: Store) -> None:
    """A holder that stalls past the ttl (a paused VM, a starved process) finds on waking that another instance
    has taken the lease. The renewer only logged it, and the body (a leader's pass, a send with the relayer
    key) went on beside the new holder's. Now the body is cancelled and LeaseLapsed raised, and the new holder's
    lease is left alone."""
    lock = Lock(redis_store, "relayer:0xabc", ttl=0.6)
    inside, cut_short = asyncio.Event(), asyncio.Event()

    async def body() -> None:
        async with lock.held(wait=1):
            inside.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cut_short.set()
                raise

    holding = asyncio.create_task(body())
    await asyncio.wait_for(inside.wait(), 30)
    await redis_store.redis.set(lock.key, "another-instance", px=60_000)  # it lapsed, and was taken
    with pytest.raises(LeaseLapsed, match="another instance has it now"):
        await asyncio.wait_for(holding, 30)
    assert cut_short.is_set()
    assert await redis_store.redis.get(lock.key) == b"another-instance"


async def test_a_leader_whose_lease_is_taken_mid_pass_stops_the_pass(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the leader's pass: it stops where it is, the keeper not run, and the step ends quietly
    (the loop goes on, and leads again once the lease is free)."""
    kept: list[str] = []
    release = asyncio.Event()

    async def follow(_chain: Any, _store: Store, _confirmations: int) -> int:
        await release.wait()
        return 0

    async def keep(_chain: Any, _store: Store) -> None:
        kept.append("kept")

    monkeypatch.setattr(leader_module, "follow", follow)
    monkeypatch.setattr(leader_module, "keep_deadlines", keep)
    metrics = SimpleNamespace(chain_lag=SimpleNamespace(set=lambda _value: None))
    leader = leader_module.Leader(SimpleNamespace(head=None, confirmations=0), redis_store, metrics)  # type: ignore[arg-type]
    leader.lease.ttl = 0.6
    passing = asyncio.create_task(leader.step())

    async def leading() -> bool:
        return await redis_store.redis.get(leader.lease.key) is not None

    await wait_until(leading, timeout=30, what="the leader's lease")
    await redis_store.redis.set(leader.lease.key, "another-instance", px=60_000)
    await asyncio.wait_for(passing, 30)  # ends without an error
    release.set()
    assert kept == []
    assert await redis_store.redis.get(leader.lease.key) == b"another-instance"


async def test_a_renewal_redis_fails_once_keeps_the_lease(redis_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal that failed on a Redis error ended the renewer: the lease lapsed under a holder still at
    work, and a second instance took it. The renewal is tried again while the lease may still be this holder's."""
    lock, other = Lock(redis_store, "relayer:0xdef", ttl=1.5), Lock(redis_store, "relayer:0xdef", ttl=1.5)
    real_eval = redis_store.redis.eval
    failures = [ConnectionError("connection reset by peer")]

    async def eval_failing_once(*args: Any) -> Any:
        if failures and lock.token in args:  # the holder's renewal
            raise failures.pop()
        return await real_eval(*args)

    monkeypatch.setattr(redis_store.redis, "eval", eval_failing_once)
    async with lock.held(wait=1):
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * lock.ttl  # the lease would have lapsed twice over
        while loop.time() < until:
            assert not await other.acquire(wait=0), "a second holder took the lease of one at work"
            await asyncio.sleep(0.1)
        assert failures == []


async def test_a_holder_busy_on_redis_is_stopped_when_its_lease_is_taken(redis_store: Store) -> None:
    """The lost lease's one cancel often did not reach a holder busy on Redis: Python 3.11's wait_for, through
    which redis-py sends every command, drops a cancel that lands as the reply arrives, and the body ran to its
    end beside the new holder. The body is now cancelled again and again until it leaves."""
    redis = redis_store.redis
    for trial in range(5):
        lock = Lock(redis_store, f"relayer:busy-{trial}", ttl=0.6)
        holding = asyncio.create_task(_busy_on_redis(lock, f"busy-{trial}"))
        await wait_until(functools.partial(_holds, lock), timeout=30, what="the lease taken")
        await redis.set(lock.key, "another-instance", px=60_000)
        with pytest.raises(LeaseLapsed):
            await asyncio.wait_for(holding, 30)
        assert await redis.get(lock.key) == b"another-instance"


async def _busy_on_redis(lock: Lock, key: str) -> None:
    """Hold `lock` for a minute, writing `key` all the time (a pass that talks to Redis)."""
    async with lock.held(wait=1):
        loop = asyncio.get_running_loop()
        until = loop.time() + 60
        while loop.time() < until:
            await lock.store.redis.set(key, "x")


async def _holds(lock: Lock) -> bool:
    return await lock.store.redis.get(lock.key) == lock.token.encode()


async def test_a_holder_whose_renewals_get_no_answer_stops_when_its_lease_can_lapse(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stops answering the holder (no error, no reply: a frozen connection). Its renewal waited for good,
    while the lease lapsed and another instance took it. A renewal is now given up when the lease can have
    lapsed (its ttl since the last renewal that took was sent), the body is stopped then, and no release is
    waited for: the lease is not the holder's any more."""
    lock = Lock(redis_store, "relayer:0xfrozen", ttl=1.0)
    real_eval = redis_store.redis.eval

    async def eval_unanswered(*args: Any) -> Any:
        if lock.token in args:  # the holder's renewal, or its release
            await asyncio.Event().wait()
        return await real_eval(*args)

    monkeypatch.setattr(redis_store.redis, "eval", eval_unanswered)
    await _stopped_by_its_lease(lock, "the holder ran on: its renewal waits for an answer for good")


async def _stopped_by_its_lease(lock: Lock, ran_on: str) -> None:
    """Hold `lock` with a body that waits for good: it must be cut short (LeaseLapsed) within 30 s, else `ran_on`."""

    async def body() -> None:
        async with lock.held(wait=1):
            await asyncio.Event().wait()

    holding = asyncio.create_task(body())
    done, _ = await asyncio.wait([holding], timeout=30)  # (not wait_for: a holder stuck in its release would hang it)
    assert done, ran_on
    with pytest.raises(LeaseLapsed):
        holding.result()


async def test_a_body_that_ended_before_its_lease_was_found_lost_is_not_said_cut_short(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body ends while a renewal is on its way; the renewer, stopped as the body leaves, does not see its
    stop (3.11's wait_for dropped it as the reply came) and the reply says the lease is gone. It cut the
    finished body short after the fact, and the holder was told its work had not been done (a relayer then
    relays again what it sent). A loss found after the body ended is not the body's."""
    lock = Lock(redis_store, "relayer:0xlate", ttl=3.0)  # the body ends a third of it in, well inside it
    real_eval = redis_store.redis.eval
    in_flight = asyncio.Event()

    async def eval_answered_late(*args: Any) -> Any:
        if lock.token in args and args[0] == RENEW:
            in_flight.set()
            with contextlib.suppress(asyncio.CancelledError):  # the stop, dropped as the reply arrives
                await asyncio.Event().wait()
            return 0  # taken by another instance meanwhile
        return await real_eval(*args)

    monkeypatch.setattr(redis_store.redis, "eval", eval_answered_late)
    async with lock.held(wait=1):
        await asyncio.wait_for(in_flight.wait(), 30)
    # It ended normally: nothing raised.


async def test_a_holder_that_stalled_past_its_ttl_is_refused_its_next_step(redis_store: Store) -> None:
    """The process stalls (a paused VM, the event loop blocked) past the lease's ttl: the lease lapses in
    Redis, and another instance may take it, while the renewer gets no chance to run. On waking, the relayer's
    check before it signs or sends looked only at what the renewer had found, and let the send through. A
    lease with no renewal that took within its ttl is taken for lost now: the check refuses, and the holding
    ends with LeaseLapsed."""
    lock = Lock(redis_store, "relayer:0xstalled", ttl=1.0)
    with pytest.raises(LeaseLapsed):
        async with lock.held(wait=1):
            time.sleep(1.5)  # noqa: ASYNC251 - the stall itself: nothing else runs meanwhile
            check_held()
            pytest.fail("the check let a step through after the lease's time was past")


async def test_a_send_under_the_relayer_lock_is_refused_once_the_leader_lease_around_it_is_lost(
    redis_store: Store,
) -> None:
    """A leader's pass sends a keeper transaction under the relayer lock. The leader lease is lost (another
    instance leads now) and the cancel does not reach the pass (3.11's wait_for dropped it): the relayer lock
    is fine, and its check let the send through, so two leaders sent keeper transactions. The check looks at
    every lease the task holds now."""
    leader, relayer = Lock(redis_store, "leader-test", ttl=0.6), Lock(redis_store, "relayer:0xnested", ttl=5.0)
    sent = False
    with pytest.raises(LeaseLapsed):
        async with leader.held(wait=1), relayer.held(wait=1):
            await redis_store.redis.set(leader.key, "another-instance", px=60_000)
            loop = asyncio.get_running_loop()
            lost_by = loop.time() + leader.ttl  # no renewal can take after this: lost, by any account
            while loop.time() < lost_by:  # the pass goes on, deaf to the cancels
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.05)
            check_held()
            sent = True  # (a failure raised here would leave as the leader's LeaseLapsed)
    assert not sent, "the send went ahead under a lost leader lease"
    assert await redis_store.redis.get(relayer.key) is None  # released: the relayer lock itself was fine


async def test_a_renewer_that_fails_on_something_unexpected_still_stops_the_body_at_the_ttl(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that failed on anything but a Redis, OS or timeout error (a reply it could not read) ended the
    renewer: nothing renewed the lease and nothing stopped the body, which ran on past the ttl beside whoever
    took the lease. Such a failure is now tried again as any other, and the body is stopped once the lease can
    have lapsed."""
    lock = Lock(redis_store, "relayer:0xunreadable", ttl=0.6)
    real_eval = redis_store.redis.eval

    async def eval_unreadable(*args: Any) -> Any:
        if lock.token in args and args[0] == RENEW:
            raise ValueError("a reply the client could not read")
        return await real_eval(*args)

    monkeypatch.setattr(redis_store.redis, "eval", eval_unreadable)
    await _stopped_by_its_lease(lock, "the body ran on past its lease's ttl: the renewer died of the error")


async def test_a_follower_whose_lease_is_lost_applies_no_more_events(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader's follower applying a long range of events loses its lease (another instance leads now), and
    the cancels do not land (3.11's wait_for drops them in its Redis commands). It went on applying the range
    beside the new leader. Each event is now preceded by the lease's check: it stops at the next one."""
    lock = Lock(redis_store, "leader-follow", ttl=0.6)
    applied: list[int] = []

    async def apply_event(_chain: Any, _store: Any, _name: str, _args: Any, _tx: str, block: int | None = None) -> None:
        applied.append(int(block or 0))
        with contextlib.suppress(asyncio.CancelledError):  # deaf to the cancels
            await asyncio.sleep(0.05)

    monkeypatch.setattr(follower_module, "apply_event", apply_event)
    topic = b"\x01" * 32
    created = SimpleNamespace(process_log=lambda _entry: {"args": {"taskId": 1}})
    chain: Any = SimpleNamespace(tasks=SimpleNamespace(events=SimpleNamespace(TaskCreated=lambda: created)))
    logs = [{"topics": [topic], "transactionHash": b"\x00" * 32, "blockNumber": n} for n in range(400)]
    with pytest.raises(LeaseLapsed):
        async with lock.held(wait=1):
            await redis_store.redis.set(lock.key, "another-instance", px=60_000)
            await follower_module._apply_logs(chain, redis_store, {topic: "TaskCreated"}, logs)
    # The lease is lost within its ttl (0.6 s, about 12 events of 0.05 s): stopped within a few events of it.
    assert len(applied) < 40, f"{len(applied)} of 400 events applied after the lease was lost"
