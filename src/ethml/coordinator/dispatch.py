"""Job dispatch to the workers connected to this instance, over the Redis job streams.

A job read from `jobs:<role>` waits under the consumer `~waiting` until a worker of that role with free
capacity, which has not yet worked on the same task, takes it (a job addressed to one account, a drawn
validator's seat, waits for a worker of that account): it is moved (XCLAIM ... JUSTID, so the delivery
count stays) to the consumer `<address>:<worker id>` and sent to the worker with its delivery number. The
move is one script that takes the job only if it is still waiting with the delivery count the pass saw,
so two instances never both deliver it. Each pass looks at the first SCAN waiting jobs and at SCAN more
from where the last pass stopped, going round, so jobs no worker here may take (seats of validators
connected elsewhere) hold up none behind them; a training job whose task no longer takes submissions is
dropped. While the worker heartbeats, its jobs are touched every pass, so they never look idle; once it
stops (SIGKILL, lost network, its instance died), its jobs go idle and after `job_timeout` XAUTOCLAIM
(its scan going on across passes) moves them back to `~waiting`, which counts a delivery. A validator's
seat delivered more than `max_deliveries` times goes to the `dead` stream. A training job never does: an
account gets one delivery of a task's training jobs, so its deliveries are bounded by the accounts staked
as trainers, and it is dropped once its task takes no more submissions (its status, or its submit
deadline past); a few staked accounts failing or handing back every job they take must not wear the job
out for the honest trainers behind them. Of the free workers that may take a training job, those whose
account stands higher go first: its training results recorded in the last 24 hours (each backed by a
commitment on chain, with its bond), counted up to PROVEN. Among accounts that stand alike, the one given
a training job least recently (by any instance: the turns are kept in Redis, and outlive a restart) goes
first, then the least loaded (a load the worker reports itself, so it decides nothing between accounts
but this). An account with no results (a fresh sybil) gets a training job only when no account with
results is free here; nothing one account does lowers another's standing, nor does a task that fails
every trainer. Holding a job without doing it costs an account nothing but the job: a few staked accounts
can each hold a job of a task to its time limit in turn (inherent, documented in docs/coordinator.md).

A result counts only from the worker the job was delivered to, for that delivery: its entry must be
pending under the worker's consumer with the delivery number the worker was sent (checked and
recorded in one script). A trainer's result counts only once the chain shows its account's commitment
to the task (`submissionOf`): a staked account that takes a training job and says it is done without
committing would otherwise end the job, and the task would get one submission fewer. Until then the
result is answered `retry` (the server's node may be a block behind the worker's, or the chain did not
answer within PROOF_TIMEOUT) and the job stays the worker's, up to its time limit; the chain is asked at
most once per PROOF_EVERY per job (whichever connection or instance the result comes through), and only
for a job pending under the worker with the delivery it names. The job id (task and slot) is the
idempotency key: the first result is kept, a repeat is acknowledged and ignored. A failed result
(`ok` false) is no result: the job is handed back, as by a release, for another account (a validator's
seat: for the same validator, after a pause, and without counting toward `max_deliveries`).

A connected worker whose job is taken back (past the job's time limit, or no longer pending under
it) is told so (`revoked`) and stops the job.

A worker that stops gracefully first says `drain`: it gets no more jobs and finishes those it runs.
One that stops at once hands its jobs back (`release`, bound like a result to its consumer and
delivery): they go back to `~waiting` with one more delivery, for another worker now rather than after
`job_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from ethml.coordinator import redis_keys as k
from ethml.coordinator.store import GROUP, WAITING, Claim, Store
from ethml.training.spec import MAX_TRAIN_SECONDS

log = structlog.get_logger("ethml.coordinator")

#: Entries per XPENDING/XCLAIM page when the waiting jobs are touched.
PAGE = 500

#: Waiting jobs a dispatch pass looks at from the front of the queue, and as many again from where the
#: last pass stopped (going round): the cost of a pass is bounded, and every waiting job is reached.
SCAN = 100

#: Idle jobs XAUTOCLAIM takes back per pass (Redis scans at most ten pending entries per job it may take).
RECLAIM = 100

#: A logged-in connection's pings and pongs a second, in bursts of CONTROL_BURST; past that they are read late (its
#: other messages wait behind them). A worker pings once in 10 s at most (aiohttp's heartbeat, when the server sent
#: it nothing meanwhile) and answers the server's heartbeat as seldom. Kept apart from the account's message rate: an
#: account's idle workers must have their pings answered at once however many messages its others have waiting
#: (aiohttp's heartbeat drops a connection whose pong is 5 s late).
CONTROL_RATE = 1.0
CONTROL_BURST = 10


def take_token(bucket: tuple[float, float] | None, rate: float, burst: int, now: float) -> tuple[float, float]:
    """A token bucket (its tokens, when counted; None: full) of `burst` tokens refilled at `rate` a second, once a
    token is taken `now`: it may go into debt, which `token_wait` turns into the wait."""
    tokens, at = bucket if bucket is not None else (float(burst), now)
    return min(float(burst), tokens + (now - at) * rate) - 1, now


def token_wait(bucket: tuple[float, float], rate: float) -> float:
    """Seconds until the token just taken from `bucket` is there (0 when it was)."""
    return -bucket[0] / rate if bucket[0] < 0 else 0.0


#: Accounts with a message bucket (`Dispatcher.message_wait`) at which the table is first pruned of full ones.
MESSAGE_BUCKETS = 1000

#: The statuses of a task that still takes submissions (its training jobs are still needed), and of one
#: whose validators may still vote.
TAKES_SUBMISSIONS = ("pending_chain", "open", "training")
TAKES_VOTES = (*TAKES_SUBMISSIONS, "validating")

#: Seconds a validator's seat waits after a failed vote before it goes back to its validator: the first pause,
#: doubled after each failure up to the last (a failed vote does not count toward --max-deliveries: a passing
#: outage of the validator's RPC must not cost it its vote; the seat is dropped once its task is settled).
SEAT_PAUSES = (5.0, 60.0)

#: The least time between two chain calls for one job's commitment (a result sent again sooner is answered
#: `retry` without one), and how long one may take (`committed` answers None past it: not known).
PROOF_EVERY = 2.0
PROOF_TIMEOUT = 5.0

#: Seconds over which an account's standing (its training results recorded) is counted, and the standing at
#: which accounts rank alike (then the one given a job least recently goes first, so work is spread).
TRAINED_WINDOW = 86400
PROVEN = 3

#: Where the turns of the accounts given a training job in the current pass are counted from (later than any
#: time Redis stamps).
THIS_PASS = 1e12

#: What `Store.claim_job` answers when it takes nothing: the job is not waiting as the pass saw it; the account has
#: worked on the task (a training job); the account was given a training job since the pass read its turn; the
#: worker has logged in again on another connection (to another instance), and this one is a connection it left.
NOT_WAITING, WORKED_ON, GIVEN_SINCE, REPLACED = 0, -1, -2, -3

#: The most jobs pending under a worker that its login adopts (a worker runs at most 16 at once).
ADOPT_MOST = 1000

#: What `Dispatcher.finish` answers for a trainer's result whose commitment the chain does not show yet.
UNPROVEN = "unproven"

#: Seconds a message to a worker may take to leave; a worker that does not read is cut off after it.
SEND_TIMEOUT = 10.0

#: Seconds a message to a worker may take to leave before the worker gets no new job until it has.
BACKLOG = 1.0


@dataclass
class WorkerConn:
    id: str
    address: str
    role: str
    ws: web.WebSocketResponse
    capacity: int
    instance: str
    connected_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    running: dict[str, bytes] = field(default_factory=dict)  # job id -> stream entry id
    deadlines: dict[str, float] = field(default_factory=dict)  # job id -> unix time it must be reported by
    cpu: float = 0.0
    memory: float = 0.0
    cluster: dict[str, int] | None = None  # a cluster-backed worker's Dask cluster: workers, threads
    draining: bool = False  # stopping: finishes its jobs, takes no new one
    transport: asyncio.Transport | None = None  # the connection's socket, to cut off a worker that stalls
    session: str = field(default_factory=lambda: secrets.token_hex(8))  # this connection, in its stored record
    upload_token: str | None = None  # given at login; kept alive while the connection reports its load
    token_renewed: float = field(default_factory=time.monotonic)
    stake_checked: float = field(default_factory=time.monotonic)  # the login checked it
    busy: float = 0.0  # seconds spent on the worker's messages since its last load report (`silent_for`)
    handling_since: float | None = None  # when the message being handled now was read
    throttled_logged: float = 0.0  # when its messages were last logged as read at the rate
    control_bucket: tuple[float, float] | None = None  # its pings and pongs' (`take_token`; CONTROL_RATE)
    report_free_at: float = 0.0  # from when its next load report is at its pace (`report_on_time`)

    _outbox: deque[tuple[Callable[[], Coroutine[Any, Any, Any]], asyncio.Future[bool]]] = field(
        default_factory=deque, repr=False
    )
    _writer: asyncio.Task[None] | None = field(default=None, repr=False)
    _closing: asyncio.Future[bool] | None = field(default=None, repr=False)
    _broken: bool = False
    _head_since: float = 0.0  # since when the first message queued has been waiting to leave

    def post(self, message: dict[str, Any]) -> asyncio.Future[bool]:
        """Queue `message` for the worker without waiting for it to leave: the future says whether it
        went out. Messages leave in the order they were posted, one at a time, from the connection's own
        writer, so a worker that stops reading holds up only its own messages, never the caller (a
        dispatch pass serves every worker of the instance)."""
        data = json.dumps(message)
        return self._queue(lambda: self.ws.send_str(data))

    def post_pong(self, data: bytes) -> asyncio.Future[bool]:
        """Queue the answer to the worker's ping, after what was posted before it."""
        return self._queue(lambda: self.ws.pong(data))

    async def send(self, message: dict[str, Any]) -> bool:
        """Post `message` and wait until it went out (or could not): whether it did."""
        return await asyncio.shield(self.post(message))  # a cancelled caller leaves the message queued

    def post_close(self, code: int, message: bytes) -> asyncio.Future[bool]:
        """Queue the close of the connection after what was posted before it (once: a second call gets
        the first one's future)."""
        if self._closing is None:
            self._closing = self._queue(lambda: self.ws.close(code=code, message=message))
        return self._closing

    async def close(self, code: int, message: bytes) -> None:
        """Close the connection after what was posted before, and wait for it."""
        await asyncio.shield(self.post_close(code, message))  # one caller's cancellation is not another's

    def _queue(self, operation: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._broken:
            future.set_result(False)
            return future
        if not self._outbox:
            self._head_since = time.monotonic()
        self._outbox.append((operation, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=f"ethml-worker-writer-{self.id}")
        return future

    async def _write(self) -> None:
        """Send what is queued, in order, each within SEND_TIMEOUT. A worker that stops reading (and
        keeps acknowledging TCP with a zero window) would hold a send for good: the heartbeat marks the
        socket closed but does not free the send. Past SEND_TIMEOUT the connection is aborted, its jobs
        left to the job timeout, and what is still queued is dropped."""
        try:
            while self._outbox and not self._broken:
                operation, future = self._outbox[0]
                self._head_since = time.monotonic()
                ok = await self._bounded(operation())
                self._outbox.popleft()
                if not future.done():  # its sender may have been cancelled meanwhile
                    future.set_result(ok)
                self._broken = self._broken or not ok
        finally:  # broken, or the writer was cancelled (the connection's handler ended)
            if self._outbox and not self._broken:
                self._broken = True
                self.abort()
            while self._outbox:
                _operation, future = self._outbox.popleft()
                if not future.done():
                    future.set_result(False)

    @property
    def open(self) -> bool:
        """Whether messages can still reach the worker: its socket is open, no close is queued, and its
        writer has not given up on it (a stalled connection is aborted, and its socket may take a moment
        to read closed)."""
        return not self._broken and self._closing is None and not self.ws.closed

    @property
    def backlogged(self) -> bool:
        """A message to the worker has been leaving for more than BACKLOG seconds: it is not reading now,
        so it gets no new job until it does (or it is cut off at SEND_TIMEOUT)."""
        return bool(self._outbox) and time.monotonic() - self._head_since > BACKLOG

    async def stop(self) -> None:
        """The connection ended: what is still queued is dropped; waits for the message leaving now (a
        send to a gone socket fails at once, one to a stalled socket within SEND_TIMEOUT)."""
        self._broken = True
        writer = self._writer
        if writer is None or writer.done():
            return
        try:
            await asyncio.shield(writer)
        except asyncio.CancelledError:
            writer.cancel()
            raise

    async def _bounded(self, operation: Coroutine[Any, Any, Any]) -> bool:
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await operation
        except TimeoutError:
            log.warning("worker_not_reading", worker=self.consumer, seconds=SEND_TIMEOUT)
            self.abort()
            return False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not this task's cancellation: aiohttp shares one drain future among the senders of a
            # connection, and another sender's timeout cancelled it. The connection is stalled either way.
            self.abort()
            return False
        except (ConnectionError, RuntimeError):
            return False  # gone: its jobs come back through XAUTOCLAIM
        except Exception as exc:  # noqa: BLE001 - nothing else is expected: cut the connection off, never die
            log.warning("worker_send_failed", worker=self.consumer, error=repr(exc))
            self.abort()
            return False
        return True

    def abort(self) -> None:
        """Drop the connection at once, whatever is still buffered for it."""
        if self.transport is not None:
            self.transport.abort()

    def report_on_time(self, pace: float) -> bool:
        """Whether a load report read now comes at least `pace` seconds after the last one that did (then the next
        may come `pace` seconds from now): such reports take no token of the account's message rate."""
        now = time.monotonic()
        if now < self.report_free_at:
            return False
        self.report_free_at = now + pace
        return True

    def silent_for(self, now: float) -> float:
        """Seconds since the worker's last load report, less the time the server spent on its messages since then
        (a load report read late because the messages before it took long is not the worker's silence)."""
        handling = now - self.handling_since if self.handling_since is not None else 0.0
        return now - self.last_seen - self.busy - handling

    def drop(self, job: str) -> None:
        """Forget a job: finished, handed back, taken back, or never sent (a dispatch pass may have
        dropped it already while the caller awaited)."""
        self.running.pop(job, None)
        self.deadlines.pop(job, None)

    @property
    def consumer(self) -> str:
        return f"{self.address}:{self.id}"

    @property
    def load(self) -> float:
        """What dispatch minimises: the share of capacity in use, then CPU and memory pressure."""
        return len(self.running) / self.capacity + 0.5 * self.cpu / 100 + 0.25 * self.memory / 100

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "role": self.role,
            "instance": self.instance,
            "running": len(self.running),
            "capacity": self.capacity,
            "cpu": self.cpu,
            "memory": self.memory,
            "load": round(self.load, 3),
            "cluster": self.cluster,
            "draining": self.draining,
            "connected_at": self.connected_at,
            "last_seen": time.time() - (time.monotonic() - self.last_seen),
            "session": self.session,
        }


class Dispatcher:
    def __init__(
        self,
        store: Store,
        instance: str,
        *,
        job_timeout: float,
        max_deliveries: int,
        job_margin: float = 600.0,
        committed: Callable[[int, str], Awaitable[bool | None]] | None = None,
    ) -> None:
        """`committed(chain task, account)`: whether the chain shows the account's commitment to the task (a
        trainer's result counts only then), None when the chain did not tell (an error, past PROOF_TIMEOUT);
        without it a trainer's word is taken."""
        self.store = store
        self.committed = committed
        self.instance = instance
        self.job_timeout = job_timeout
        self.max_deliveries = max_deliveries
        self.job_margin = job_margin
        self.conns: dict[str, WorkerConn] = {}  # by consumer name: <address>:<worker id>
        self.dead_lettered = 0
        self.dispatched = 0
        self._scan_from: dict[str, str] = {}  # by role: the last waiting job a pass looked at past the front
        self._reclaim_from: dict[str, str] = {}  # by role: where the next XAUTOCLAIM scan starts
        self._docs: dict[tuple[str | None, str], dict[str, Any] | None] = {}  # read this pass, by chain task and id
        self._standing: dict[str, int] = {}  # read this pass, by account (lower case)
        self._given: dict[str, float] = {}  # read this pass, by account: when it was last given a training job
        self._message_buckets: dict[str, tuple[float, float]] = {}  # by account: tokens, when counted
        self._buckets_pruned_at = MESSAGE_BUCKETS  # the table's size that has it pruned next
        # No job is taken back before this instance has run for `job_timeout`: a job's idle time in Redis counts
        # from its last touch, before an outage of the server too, and its worker needs the time to reconnect
        # (and touch it) once the server is back. Taken back at the first pass, the jobs of every worker were
        # lost for good to an outage longer than `job_timeout` (an account gets one delivery of a task's jobs).
        self._reclaims_from = time.monotonic() + job_timeout

    def message_wait(self, account: str, rate: float, burst: int) -> float:
        """Seconds to wait before handling one more message of `account`'s workers (all its connections to this
        instance together): a token bucket of `burst` messages refilled at `rate` a second, whose token is
        taken now (a bucket may go into debt: concurrent connections each wait their turn). Kept across
        reconnections, so logging in again buys no burst; a bucket that would be full again is forgotten when the
        table has grown to twice what it held after the last pruning (at least MESSAGE_BUCKETS): a pruning costs a
        pass over the table, and with more accounts than that active at once one on every message did."""
        now = time.monotonic()
        bucket = self._message_buckets[account] = take_token(self._message_buckets.get(account), rate, burst, now)
        if len(self._message_buckets) >= self._buckets_pruned_at:
            self._message_buckets = {
                a: (t, when) for a, (t, when) in self._message_buckets.items() if t + (now - when) * rate < burst
            }
            self._buckets_pruned_at = max(MESSAGE_BUCKETS, 2 * len(self._message_buckets))
        return token_wait(bucket, rate)

    async def run_pass(self) -> None:
        self._docs = {}  # each task document read once a pass, however many of its jobs wait
        for role in ("trainer", "validator"):
            await self._pass(role)

    async def _pass(self, role: str) -> None:
        stream = k.jobs(role)
        redis = self.store.redis
        mine = [c for c in self.conns.values() if c.role == role]
        now = time.time()
        for conn in mine:  # keep the jobs of live workers fresh; forget those taken back meanwhile
            for job in [j for j in conn.running if conn.deadlines.get(j, now) < now]:
                # Connected, but past the job's time limit: no longer touched, so it is reclaimed after
                # job_timeout and goes to another worker; a result from this one no longer counts, and
                # the worker is told so (it stops the job, and its slot is free for the next one).
                conn.drop(job)
                log.warning("job_overdue", job=job, worker=conn.consumer)
                self._revoke(conn, job, "past its time limit: it goes back to waiting for another worker")
            if conn.running:
                kept = await self.store.touch_entries(stream, GROUP, conn.consumer, list(conn.running.values()))
                for job, entry_id in list(conn.running.items()):
                    if entry_id not in kept:
                        conn.drop(job)
                        log.warning("job_taken_back", job=job, worker=conn.consumer)
                        self._revoke(conn, job, "no longer pending under this worker (taken back)")
        await self._keep_waiting_fresh(stream)
        if time.monotonic() >= self._reclaims_from:
            await self._reclaim(stream, role)
        await redis.xreadgroup(GROUP, WAITING, {stream: ">"}, count=100)
        if not mine:
            return
        waiting = await self._waiting(stream, role)
        # A seat has one account that may take it; with no job waiting, none is ranked.
        self._standing, self._given = {}, {}
        if role == "trainer" and waiting:
            self._standing, self._given = await self._ranks(sorted({c.address.lower() for c in mine}))
        for w, rolling in waiting:
            free = [c for c in mine if len(c.running) < c.capacity and c.open and not c.backlogged and not c.draining]
            if not free:
                return
            if rolling:
                self._scan_from[role] = _text(w["message_id"])
            await self._assign(stream, role, w["message_id"], int(w["times_delivered"]), free)

    async def _reclaim(self, stream: str, role: str) -> None:
        """Jobs of workers that stopped heartbeating: back to waiting, one more delivery. Redis scans at most
        ten pending entries per job it may take in a call: the scan goes on from the cursor it returns, so
        the live jobs ahead of a dead worker's (however many) cannot hide it."""
        redis = self.store.redis
        start = self._reclaim_from.get(role, "0-0")
        reply = await redis.xautoclaim(
            stream, GROUP, WAITING, int(self.job_timeout * 1000), start_id=start, count=RECLAIM
        )
        self._reclaim_from[role] = _text(reply[0])
        for entry_id, fields in reply[1]:  # Redis 7 adds a third element (deleted ids), 6.2 has two
            if fields is None:
                continue
            info = await redis.xpending_range(stream, GROUP, entry_id, entry_id, 1)
            delivered = int(info[0]["times_delivered"]) if info else 1
            job = fields.get(b"job", b"?").decode()
            log.warning("job_reclaimed", job=job, deliveries=delivered)
            await self._dead_letter_if_spent(stream, entry_id, delivered, job, role, self._silent(delivered))

    def _silent(self, delivered: int) -> str:
        """Why a job reclaimed past its limit is dead."""
        return (
            f"taken back from its last worker, silent for {self.job_timeout:g} s (it stopped heartbeating, or held "
            f"the job past its time limit), after {delivered - 1} deliveries"
        )

    async def _waiting(self, stream: str, role: str) -> list[tuple[dict[str, Any], bool]]:
        """The waiting jobs this pass looks at, oldest first: the first SCAN (the queue's front, so the
        oldest jobs go first), then SCAN more from where the last pass stopped behind the front, going
        round to the front's end when it reaches the queue's (so jobs no worker here may take, however
        many, hold up none behind them). Each with whether it is of the rolling part."""
        redis = self.store.redis
        front = await redis.xpending_range(stream, GROUP, "-", "+", SCAN, consumername=WAITING)
        if len(front) < SCAN:
            return [(w, False) for w in front]  # the whole queue
        edge = _text(front[-1]["message_id"])
        after = self._scan_from.get(role)
        if after is None or _stream_id(after) < _stream_id(edge):
            after = edge
        rolling = await redis.xpending_range(stream, GROUP, f"({after}", "+", SCAN, consumername=WAITING)
        if len(rolling) < SCAN and after != edge:  # the end of the queue: round again from behind the front
            rolling += await redis.xpending_range(
                stream, GROUP, f"({edge}", after, SCAN - len(rolling), consumername=WAITING
            )
        return [(w, False) for w in front] + [(w, True) for w in rolling]

    async def _keep_waiting_fresh(self, stream: str) -> None:
        """Waiting is not idle: every job waiting for a worker is touched, page by page, so only jobs of
        silent workers are reclaimed (a job past the first page went idle and was reclaimed, one more
        delivery each time, until it was dead-lettered without ever running). Only those still waiting when
        they are touched (`Store.touch_entries`): one another instance claimed for its worker since the page
        was read stays that worker's (a bare XCLAIM took it back from under the worker it had been sent to,
        and the job went to a second account as the same delivery)."""
        start = "-"
        while True:
            waiting = await self.store.redis.xpending_range(stream, GROUP, start, "+", PAGE, consumername=WAITING)
            if waiting:
                ids = [w["message_id"] for w in waiting]
                await self.store.touch_entries(stream, GROUP, WAITING, ids)
            if len(waiting) < PAGE:
                return
            last = waiting[-1]["message_id"]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))

    def _revoke(self, conn: WorkerConn, job: str, reason: str) -> None:
        """Tell a connected worker that a job is no longer its own: a result would not count, so it stops
        the job (a worker that does not know the message ignores it, as before)."""
        if conn.open:
            conn.post({"type": "revoked", "job": job, "reason": reason})

    async def _delivery_limit(self, job: str, role: str) -> int:
        """The deliveries `job` may have (0: no limit). A training job has none: an account gets one delivery of
        a task's training jobs, and the job is dropped once its task takes no more submissions. A validator's
        seat may have `max_deliveries`, and as many more as its votes that failed (forgiven: a passing outage of
        the validator's RPC does not cost it its vote)."""
        if role != "validator":
            return 0
        return self.max_deliveries + int(await self.store.redis.get(k.job_forgiven(job)) or 0)

    async def _dead_letter_if_spent(
        self, stream: str, entry_id: bytes, delivered: int, job: str, role: str, reason: str | None = None
    ) -> bool:
        """A job delivered more times than its limit (`_delivery_limit`) goes to the dead stream, with its count and
        `reason` (once, whoever gets there first). Whether it was spent. Without a reason, the job was found spent
        while waiting (an instance restarted with a lower --max-deliveries, or a reclaim whose dead-lettering an
        instance did not live to make): the reason says only that."""
        if role != "validator" or delivered <= self.max_deliveries:
            return False
        limit = await self._delivery_limit(job, role)
        if delivered <= limit:
            return False
        if reason is None:
            made = delivered - 1
            times = "1 time" if made == 1 else f"{made} times"
            reason = f"spent while waiting for a worker: delivered {times}, its limit {limit}"
        if await self.store.dead_letter(stream, entry_id, delivered, reason, job):
            self.dead_lettered += 1
        return True

    async def _assign(self, stream: str, role: str, entry_id: bytes, delivered: int, free: list[WorkerConn]) -> None:
        redis = self.store.redis
        rows = await redis.xrange(stream, entry_id, entry_id)
        if not rows:
            await self.store.finish_entry(stream, GROUP, entry_id)
            return
        fields = {k.decode(): v.decode() for k, v in rows[0][1].items()}
        job = fields["job"]
        if await self._dead_letter_if_spent(stream, entry_id, delivered, job, role):
            return  # reclaimed past its limit, and not dead-lettered yet: never one delivery more
        if await self.store.has_result(job):  # finished already (a late duplicate delivery)
            await self.store.finish_entry(stream, GROUP, entry_id)
            return
        doc = await self._tracking(fields)
        addressed = fields.get("address")
        status = (doc or {}).get("status")
        # (pending_chain: a posted task that just took the link over, and is opened by its relay)
        if not addressed and time.time() > float((doc or {}).get("submit_deadline") or "inf"):
            status = "past its submit deadline"  # the chain takes no commitment any more
        if status is not None and status not in (TAKES_VOTES if addressed else TAKES_SUBMISSIONS):
            # Settled, or past the submissions: the seat's vote is moot, the training job not needed. Jobs
            # nobody here may take would otherwise pile up in the queue for good.
            await self.store.finish_entry(stream, GROUP, entry_id)
            log.info("job_dropped", job=job, status=status)
            return
        if addressed:  # a drawn validator's seat: only that validator may vote in it
            eligible = [c for c in free if c.address.lower() == addressed.lower()]
            if not eligible and doc is None:
                await self.store.finish_entry(stream, GROUP, entry_id)  # no task tracks it: moot
                return
            if eligible and await redis.exists(k.job_pause(job)):
                return  # its last vote failed a moment ago: again after the pause
        else:
            done = {a.decode() for a in await redis.smembers(k.task_workers(fields["chain_task"], role))}
            eligible = [c for c in free if c.address not in done]
        chain_task = fields["chain_task"]
        claim, deadline = Claim(NOT_WAITING), 0.0
        while eligible:
            conn = min(eligible, key=self._rank)
            claim, deadline = await self._claim(role, entry_id, delivered, conn, fields, doc)
            if claim.code == REPLACED:
                # The worker's latest login is another connection's (to another instance, which this one has
                # not seen end): the job goes to the next worker (one taken for a connection the worker had left
                # waited for the job timeout, and went out again one delivery later). The connection is not
                # closed: a login the worker gave up on may pass for its latest for a moment, until it fails.
                log.info("worker_not_latest", worker=conn.consumer, job=job)
                eligible = [c for c in eligible if c is not conn]
                continue
            if claim.code > 0 or claim.code == NOT_WAITING or addressed:
                break
            account = conn.address.lower()
            if claim.code == GIVEN_SINCE:
                # Another instance gave the account a training job since this pass read its turn: ranked again
                # with the turn it has now (it may still go first: the accounts given one in this pass, or with a
                # lower standing, go after it), not a pass later. Another refusal needs yet another job given.
                given = float(claim.after or 0.0)  # (read by the claim)
                self._given[account] = max(self._given.get(account, 0.0), given)  # (given one this pass: stays last)
                continue
            # Another instance gave the account a job of this task meanwhile: the next account takes it now.
            eligible = [c for c in eligible if c.address.lower() != account]
        if claim.code <= 0:
            return
        if conn.draining or not conn.open:
            # It drained (or left) during the awaits above, and may have been told no job follows: the
            # job goes back to waiting as it was, no delivery spent (nothing was sent), and the account's
            # turn and the job's last worker are taken back, in one step; unless the worker has logged in again
            # elsewhere meanwhile, whose new connection adopted the job (`Store.unclaim`). Checked with no await
            # before the job is posted, so a job is never queued after the answer to a drain.
            worker = (conn.consumer, conn.address, conn.session)
            await self.store.unclaim(role, entry_id, delivered, worker, job, chain_task, claim)
            return
        conn.running[job] = entry_id
        conn.deadlines[job] = deadline
        # Not waited for: a worker that does not read holds up only its own messages. Should the message
        # not leave, the job stays under this worker and comes back through XAUTOCLAIM.
        conn.post(job_message(fields, delivered))
        self.dispatched += 1
        log.info("job_dispatched", job=job, worker=conn.consumer, delivery=delivered)
        if not addressed:  # its turn, stamped in Redis by the claim; for the next jobs of this pass, after
            # every account not given one in it, in the order given (no local clock: it may differ from Redis's)
            self._given[conn.address.lower()] = THIS_PASS + self.dispatched

    async def _claim(
        self,
        role: str,
        entry_id: bytes,
        delivered: int,
        conn: WorkerConn,
        fields: dict[str, str],
        doc: dict[str, Any] | None,
    ) -> tuple[Claim, float]:
        """Take the waiting job for `conn` (`Store.claim_job`): taken only if still waiting as this pass saw it
        (another instance may have taken it since, or a release or reclaim counted a delivery), and for a
        training job only if no worker of the account took one of the task's jobs meanwhile (an account gets one
        delivery of a task's training jobs), nor any training job since this pass read its turn. What the claim
        did, and the job's deadline."""
        addressed = bool(fields.get("address"))
        deadline = time.time() + self._limit(fields, doc)
        claimed = await self.store.claim_job(
            role,
            fields["job"],
            entry_id,
            delivered,
            (conn.consumer, conn.address, conn.session),
            deadline,
            fields["chain_task"],
            once_per_account=not addressed,
            submit_deadline=float((doc or {}).get("submit_deadline") or 0),
            turn=None if addressed else self._given.get(conn.address.lower(), 0.0),
        )
        return claimed, deadline

    async def finish(self, conn: WorkerConn, job: str, delivery: int, result: dict[str, Any]) -> str:
        """A worker's result for `job`, which it says it was sent as delivery `delivery`: recorded,
        duplicate (acknowledged, a result was kept already), UNPROVEN (a trainer's, whose commitment the chain
        does not show yet: the job stays the worker's, and the result may be sent again), or why it does not
        count. A failed result (`ok` false) is handed back as a release is: requeued (one more delivery) or,
        for a validator's seat, dead (past its limit). It is not the job's result: a worker that fails every
        job it takes (or a benign one's passing RPC or IPFS error) ends no job. A training job goes to another
        account (the failing one has had its delivery of the task's training jobs). A validator's failed vote
        is forgiven (it does not count toward the limit) and its seat waits out a pause (SEAT_PAUSES) before it
        goes back to it. A trainer's recorded result adds to its account's standing (`k.trained`)."""
        entry_id = conn.running.get(job)
        if entry_id is None:
            kept = await self.store.result(job)
            if kept is not None and kept.get("worker") == conn.consumer:
                return "duplicate"  # a repeat of a result already recorded (its acknowledgement was lost)
            return "not delivered to this worker"
        if result.get("ok") and conn.role == "trainer" and self.committed is not None:
            held = await self._held(conn, job, entry_id, delivery)  # before any chain call
            if held is not None:
                return held
            if not await self._commitment_shown(conn, job):
                return UNPROVEN
            if conn.running.get(job) != entry_id:  # taken back (past its time limit) while the chain answered
                return "not delivered to this worker any more (it timed out and went to another)"
        if not result.get("ok"):
            seat = conn.role == "validator"
            limit = await self._delivery_limit(job, conn.role) + (1 if seat else 0)  # a failed vote is forgiven
            first, most = SEAT_PAUSES
            pause = min(most, first * 2 ** min(max(delivery - 1, 0), 16)) if seat else None
            detail = result.get("detail")
            outcome = await self._hand_back(
                conn,
                job,
                entry_id,
                delivery,
                "job_failed",
                limit=limit,
                reason=_failure(detail),
                forgiven_pause=pause,
                detail=detail,
            )
            return {"released": "requeued"}.get(outcome, outcome)
        outcome = await self.store.finish_job(
            conn.role, job, conn.consumer, entry_id, delivery, {**result, "worker": conn.consumer, "at": time.time()}
        )
        if outcome == "stale":
            return f"delivery {delivery} is not the delivery this worker was sent"
        conn.drop(job)
        if outcome in ("gone", "reassigned"):
            return "not delivered to this worker any more (it timed out and went to another)"
        if outcome == "recorded" and conn.role == "trainer":
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.zadd(k.trained(conn.address), {job: time.time()})
            pipe.expire(k.trained(conn.address), TRAINED_WINDOW)
            await pipe.execute()
        return outcome

    async def _held(self, conn: WorkerConn, job: str, entry_id: bytes, delivery: int) -> str | None:
        """None if `job` is pending under `conn`'s consumer with delivery count `delivery` (as FINISH_JOB will
        check again), else why its result does not count."""
        info = await self.store.redis.xpending_range(k.jobs(conn.role), GROUP, entry_id, entry_id, 1)
        if info and _text(info[0]["consumer"]) == conn.consumer:
            if int(info[0]["times_delivered"]) == delivery:
                return None
            return f"delivery {delivery} is not the delivery this worker was sent"
        conn.drop(job)
        return "not delivered to this worker any more (it timed out and went to another)"

    async def _commitment_shown(self, conn: WorkerConn, job: str) -> bool:
        """Whether the chain shows the commitment of `conn`'s account to the training job's task (asked at most
        once per PROOF_EVERY per job, through whichever connection or instance: a result sent again sooner, or
        one the chain did not answer for, is not shown yet)."""
        assert self.committed is not None
        if not await self.store.redis.set(k.proof_asked(job), "1", nx=True, px=int(PROOF_EVERY * 1000)):
            return False
        if await self.committed(int(job.split(":")[0]), conn.address):
            return True
        log.info("result_unproven", job=job, worker=conn.consumer)
        return False

    def _rank(self, conn: WorkerConn) -> tuple[int, float, float]:
        """Which of the workers that may take a training job goes first (the least): its account's standing
        (up to PROVEN), then the account given a training job least recently (by any instance), then the least
        loaded."""
        account = conn.address.lower()
        return -min(self._standing.get(account, 0), PROVEN), self._given.get(account, 0.0), conn.load

    async def standing(self, accounts: list[str]) -> dict[str, int]:
        """Each account's standing: its training results recorded in the last 24 hours (the set trimmed to them as
        it is read)."""
        return (await self._ranks(accounts, turns=False))[0]

    async def _ranks(self, accounts: list[str], *, turns: bool = True) -> tuple[dict[str, int], dict[str, float]]:
        """Each account's standing and, with `turns`, when it was last given a training job by any instance (absent:
        not this past day), in one round trip (the sets trimmed to the last day as they are read)."""
        since = time.time() - TRAINED_WINDOW
        pipe = self.store.redis.pipeline(transaction=False)
        for account in accounts:
            pipe.zremrangebyscore(k.trained(account), "-inf", since)
            pipe.zcard(k.trained(account))
        turns = turns and bool(accounts)
        if turns:
            pipe.zremrangebyscore(k.GIVEN, "-inf", since)
            pipe.zmscore(k.GIVEN, [a.lower() for a in accounts])
        replies = await pipe.execute()
        counts = replies[1 : 2 * len(accounts) : 2]
        given = replies[-1] if turns else [None] * len(accounts)
        return (
            {a.lower(): int(n) for a, n in zip(accounts, counts, strict=True)},
            {a.lower(): float(t) for a, t in zip(accounts, given, strict=True) if t is not None},
        )

    async def release(self, conn: WorkerConn, job: str, delivery: int) -> str:
        """A worker hands back `job`, which it says it was sent as delivery `delivery`: released (back to
        waiting with one more delivery, or, for a validator's seat, to the dead stream past its limit), or why
        not."""
        entry_id = conn.running.get(job)
        if entry_id is None:
            return "not delivered to this worker"
        outcome = await self._hand_back(
            conn,
            job,
            entry_id,
            delivery,
            "job_released",
            limit=await self._delivery_limit(job, conn.role),
            reason="handed back by its worker, which was stopping",
        )
        return "released" if outcome == "dead" else outcome

    async def _hand_back(
        self,
        conn: WorkerConn,
        job: str,
        entry_id: bytes,
        delivery: int,
        event: str,
        *,
        limit: int,
        reason: str,
        forgiven_pause: float | None = None,
        **details: Any,
    ) -> str:
        """Back to waiting with one more delivery (released) or to the dead stream (dead: past `limit`
        deliveries, 0 for none, with `reason`), only if the job is pending under the worker's consumer with the
        delivery number given; else why not. With `forgiven_pause`, the failure is forgiven in the same step
        (`Store.release_job`)."""
        outcome = await self.store.release_job(
            conn.role, conn.consumer, entry_id, delivery, limit, reason, job=job, forgiven_pause=forgiven_pause
        )
        if outcome == "stale":
            return f"delivery {delivery} is not the delivery this worker was sent"
        conn.drop(job)
        if isinstance(outcome, str):  # gone or reassigned: it had timed out and gone elsewhere already
            return "not delivered to this worker any more (it timed out and went to another)"
        log.info(event, job=job, worker=conn.consumer, deliveries=abs(outcome), **details)
        if outcome < 0:
            self.dead_lettered += 1
            log.warning("job_dead", job=job, deliveries=-outcome)
            return "dead"
        return "released"

    async def _time_limit(self, fields: dict[str, str]) -> float:
        """Seconds a worker has for a job before it is taken back: the task's time limit per training
        (once for a training job, once per trainer and once more for a validation job, which may re-fit
        each submission and the reference model) plus `job_margin` for the data, the transactions and
        the upload. A task without its spec here (imported from the chain) gets the largest limit."""
        return self._limit(fields, await self._tracking(fields))

    def _limit(self, fields: dict[str, str], doc: dict[str, Any] | None) -> float:
        spec = (doc or {}).get("spec") or {}
        seconds = float(spec.get("max_train_seconds") or MAX_TRAIN_SECONDS)
        fits = 1 if fields["kind"] == "train" else int((doc or {}).get("trainers") or 1) + 1
        return seconds * fits + self.job_margin

    async def _tracking(self, fields: dict[str, str]) -> dict[str, Any] | None:
        """The document that tracks the job's chain task now (the one the job names, if no link is found).
        A posted task that took over an imported one's link tracks the jobs queued for the import: they
        keep their ids, so they are not queued again, and the import's document is failed."""
        key = (fields.get("chain_task"), fields["task"])
        if key not in self._docs:
            doc = await self.store.task_by_chain_id(int(fields["chain_task"])) if "chain_task" in fields else None
            self._docs[key] = doc or await self.store.task(fields["task"])
        return self._docs[key]

    async def take_over(self, conn: WorkerConn, ttl: float) -> list[dict[str, Any]]:
        """A worker's login: `conn`'s record is written (to expire after `ttl` s) and its session made the
        worker's latest, and the jobs pending under the worker are read, in one step (`Store.login_worker`);
        then they are adopted (`adopt`). The job messages to send again. A job another instance takes for a
        connection the worker has left (which that instance has not seen end) is then either taken before this
        step, and adopted, or refused (`Store.claim_job` takes jobs only for the latest login's connection).
        Read apart from the record, a job taken between the two was neither adopted nor undone (`Store.unclaim`
        leaves the jobs of a worker that logged in again), and came back only after the job timeout, one
        delivery later. Should the login fail after this, it is the latest until that expires (`store.
        LATEST_KEEP_MIN_MS`), unless the worker's next login replaces it."""
        resend = await self.join(conn, ttl)
        if resend:
            await self.store.put_worker(conn.view(), ttl)  # with its running jobs
        return resend

    async def join(self, conn: WorkerConn, ttl: float) -> list[dict[str, Any]]:
        """`take_over`'s step (`Store.login_worker`), adopting the jobs read that `conn` does not run yet: the job
        messages of those, to send. Also the login's last step, after its welcome went out and before dispatch
        sees it, so the login that finishes last is the worker's latest (one of the same worker that ran alongside
        made itself the latest in between: the later to finish stays, as the docs say), and the jobs taken
        meanwhile for the connection it replaced are adopted too."""
        entries = await self.store.login_worker(conn.view(), ttl, conn.role, ADOPT_MOST)
        known = set(conn.running.values())
        return self.adopt(conn, await self._pending(conn, [e for e in entries if e[0] not in known]))

    def adopt(self, conn: WorkerConn, pending: list[Pending]) -> list[dict[str, Any]]:
        """A reconnecting worker keeps the jobs still pending under its consumer name that are not past
        their time limit, with the deadline each was delivered with (a reconnect does not buy time).
        Returns their job messages, to send it again: an assignment lost with the old connection reaches
        the worker now, as the same delivery, instead of holding the job until its time limit (a worker
        ignores a job it is running or has finished). An overdue job (or one whose deadline is gone from
        Redis, which keeps it a day past the deadline unless evicted) is not adopted: it is left untouched,
        so it is reclaimed after `job_timeout` for another worker; the welcome does not list it, so the
        worker stops it, and its late result is refused as it would be on the old connection."""
        now = time.time()
        adopted = [p for p in pending if p.deadline is not None and p.deadline > now]
        for p in adopted:
            conn.running[p.job] = p.entry_id
            conn.deadlines[p.job] = p.deadline or 0.0
        return [p.message for p in adopted]

    async def _pending(self, conn: WorkerConn, entries: list[tuple[bytes, int]]) -> list[Pending]:
        """The jobs of the stream entries pending under the worker (their ids and delivery counts, as its login
        read them), with the deadline each was delivered with; entries gone since are left out."""
        stream = k.jobs(conn.role)
        found = []
        for entry_id, delivered in entries:
            rows = await self.store.redis.xrange(stream, entry_id, entry_id)
            if rows:
                fields = {name.decode(): value.decode() for name, value in rows[0][1].items()}
                deadline = await self.store.redis.get(k.job_deadline(fields["job"]))
                message = job_message(fields, delivered)
                found.append(Pending(fields["job"], entry_id, float(deadline) if deadline else None, message))
        return found


def _failure(detail: Any) -> str:
    """Why a job is dead after its worker's failed result: the worker's `detail`, as JSON unless it is text."""
    if detail is None:
        return "its worker failed it, and said no more"
    said = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True, default=str)
    return f"its worker failed it: {said}"


def _text(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`) as a pair that sorts as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Pending:
    """A job pending under a worker's consumer: its stream entry, the deadline it was delivered with (None
    if it is gone from Redis) and the job message as the worker was sent it."""

    job: str
    entry_id: bytes
    deadline: float | None
    message: dict[str, Any]


def job_message(fields: dict[str, str], delivery: int) -> dict[str, Any]:
    """The job message a worker is sent for a job stream entry's fields, as delivery `delivery`."""
    return {
        "type": "job",
        "job": fields["job"],
        "kind": fields["kind"],
        "task": fields["task"],
        "delivery": delivery,
        "chain_task": int(fields["chain_task"]),
    }
