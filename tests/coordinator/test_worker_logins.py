"""Which of a worker's connections takes its jobs when its logins overlap: a login it gave up on, two logins at
once on one instance or on two. The real login (routes/worker_login.py) runs against instances that share one
Redis; the chain's stake check is a stand-in that can be made to wait."""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import WSMsgType
from eth_account import Account
from redis.exceptions import ConnectionError as RedisConnectionError

from ethml.coordinator import dispatch
from ethml.coordinator import redis_keys as k
from ethml.coordinator import store as store_module
from ethml.coordinator.appkeys import CHAIN, CONFIG, DISPATCHER, STORE
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.permit import sign_login
from ethml.coordinator.routes.worker_login import login
from ethml.coordinator.store import Store
from tests.coordinator.test_dispatch_queue import STREAM, RecordingSocket, _jobs, _sent_out
from tests.node.conftest import wait_until

KEY = "0x" + "4b" * 32
ADDRESS = Account.from_key(KEY).address


class HungUpSocket(RecordingSocket):
    """A login's socket the worker has given up on: nothing it is sent arrives."""

    async def send_str(self, data: str) -> None:
        raise ConnectionResetError("Cannot write to closing transport")


class SlowSocket(RecordingSocket):
    """A socket whose first message (the welcome) leaves only once `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting, self.go = asyncio.Event(), asyncio.Event()

    async def send_str(self, data: str) -> None:
        if not self.sent:
            self.waiting.set()
            await self.go.wait()
        await super().send_str(data)


class Stake:
    """TrainingTasks.isStaked, answering true at once or, when `slow`, once `answer` is set."""

    def __init__(self, slow: bool) -> None:
        self.slow, self.asked, self.answer = slow, asyncio.Event(), asyncio.Event()
        self.tasks = SimpleNamespace(functions=SimpleNamespace(isStaked=self._is_staked))

    def _is_staked(self, _signer: str, _role: int) -> Any:
        async def call() -> bool:
            self.asked.set()
            if self.slow:
                await self.answer.wait()
            return True

        return SimpleNamespace(call=call)


class Instance:
    """One `ethml serve` instance, as far as a login goes, on the shared Redis."""

    def __init__(self, store: Store, name: str, *, slow_stake: bool = False, heartbeat_timeout: float = 30.0) -> None:
        self.name = name
        self.dispatcher = Dispatcher(Store(store.redis), name, job_timeout=30, max_deliveries=3)
        self.stake = Stake(slow_stake)
        config = SimpleNamespace(
            instance=name, heartbeat_timeout=heartbeat_timeout, heartbeat_interval=5.0, worker_connections=100
        )
        self.app = {CONFIG: config, STORE: self.dispatcher.store, DISPATCHER: self.dispatcher, CHAIN: self.stake}
        self._nonces = 0

    def login(self, ws: RecordingSocket, role: str = "trainer") -> asyncio.Task[dispatch.WorkerConn | None]:
        """Worker w1 of ADDRESS logs in over `ws`."""
        self._nonces += 1
        nonce = f"{self.name}-{self._nonces}"
        body = {
            "type": "auth",
            "role": role,
            "address": ADDRESS,
            "signature": sign_login(KEY, self.name, nonce, role),
            "worker_id": "w1",
            "capacity": 1,
        }
        message = SimpleNamespace(type=WSMsgType.TEXT, data=json.dumps(body))
        return asyncio.create_task(login(self.app, ws, message, nonce, None))  # type: ignore[arg-type]


async def _job_waits(store: Store) -> None:
    await store.redis.set(k.task("t"), json.dumps({"status": "open", "spec": {"max_train_seconds": 60}}))
    await store.redis.xadd(STREAM, {"job": "1:train:0", "kind": "train", "task": "t", "chain_task": 1})


async def _latest(store: Store, conn: dispatch.WorkerConn) -> bool:
    return bool(await store.redis.get(k.worker_session(conn.consumer)) == conn.session.encode())


@pytest.mark.parametrize("failure", ["its welcome does not leave", "Redis fails after its step"])
async def test_a_login_the_worker_gave_up_on_holds_its_jobs_back_from_the_live_connection_briefly(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The worker's login to instance A waits on A's stake check; the worker gives up on it and logs in to B. A's
    check then answers: its login makes itself the worker's latest and fails. It stayed the latest for a day, and
    the worker's live connection on B had its load reports refused and got no job for as long. The latest now
    lasts a few record lifetimes unless its connection reports (here 0.1 s records, kept 0.5 s): then the live
    connection's next load report makes it the latest, and it gets the job."""
    store = redis_store
    monkeypatch.setattr(store_module, "LATEST_KEEP_MIN_MS", 500)
    await _job_waits(store)
    a = Instance(store, "instance-a", slow_stake=True, heartbeat_timeout=0.1)
    b = Instance(store, "instance-b", heartbeat_timeout=0.1)
    if failure == "Redis fails after its step":

        async def redis_fails(*_args: Any) -> Any:
            raise RedisConnectionError("Connection reset by peer")

        monkeypatch.setattr(a.dispatcher, "_pending", redis_fails)
    abandoned = a.login(HungUpSocket())
    await asyncio.wait_for(a.stake.asked.wait(), 30)
    live = await asyncio.wait_for(b.login(RecordingSocket()), 30)
    assert live is not None
    a.stake.answer.set()
    with contextlib.suppress(RedisConnectionError):
        assert await asyncio.wait_for(abandoned, 30) is None
    assert not await _latest(store, live)  # (the abandoned login's, for now)

    async def reports_again() -> bool:
        return await store.put_worker(live.view(), 0.1)

    await wait_until(reports_again, timeout=60, what="the live connection's load report recorded")
    assert await _latest(store, live)
    await b.dispatcher.run_pass()
    await _sent_out(live)
    assert live.open and _jobs(live.ws) == [("1:train:0", 1)]  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["one instance", "two instances"])
async def test_of_two_logins_at_once_the_later_to_finish_takes_the_jobs(redis_store: Store, where: str) -> None:
    """Login 1's welcome is slow to leave; login 2 runs from start to end meanwhile; then login 1 finishes. Login 1
    made itself the worker's latest first, so login 2's step made login 2 the latest: on one instance login 1 then
    closed login 2 and took its place, and got no job (the worker was left with no connection that took jobs
    until the latest expired); on two, login 1's load reports were refused. A login makes itself the latest again
    as it finishes: the later to finish takes the jobs, as the docs say."""
    store = redis_store
    await _job_waits(store)
    first = Instance(store, "instance-a")
    second = first if where == "one instance" else Instance(store, "instance-b")
    slow = SlowSocket()
    one = first.login(slow)
    await asyncio.wait_for(slow.waiting.wait(), 30)
    two = await asyncio.wait_for(second.login(RecordingSocket()), 30)
    assert two is not None
    slow.go.set()
    later = await asyncio.wait_for(one, 30)
    assert later is not None and await _latest(store, later)
    assert await store.put_worker(later.view(), 30)
    await second.dispatcher.run_pass()
    await first.dispatcher.run_pass()
    await _sent_out(later)
    assert _jobs(later.ws) == [("1:train:0", 1)]  # type: ignore[arg-type]
    assert not await store.put_worker(two.view(), 30)  # the earlier to finish: not the latest
