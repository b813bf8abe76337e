"""`ethml worker`: a training or validation worker of a coordinator.

It logs in over the WebSocket by signing the server's nonce with its Ethereum key, reports its load
every few seconds (with the size of its Dask cluster, if it has one), runs each job with
`ethml.training` (in a child process with the spec's time limit; its parallel parts on the Dask
cluster of `WorkerConfig.compute`), sends its own transactions with its own key, and reports the
result. A training job trains and commits to the submission; a validation job (sent only to the
validator the draw seated) scores every submission and commits the vote. The job ends there, so a
worker's capacity is not held through the windows; the reveal that each commitment owes is a duty
the worker keeps in the background: it waits for the window and reveals (a trainer uploads its
model to the coordinator at that moment, not before). The secrets a reveal needs are in the data
dir, written before the commitment, so a restarted worker resumes its duties from there.
After a disconnect it reconnects with backoff under the same worker id, so the jobs it is running
stay its own, and it re-sends results the server has not acknowledged; the server sends its jobs
again, so one whose assignment was lost with the connection runs now. A job the server takes back
(`revoked`: past its time limit, or no longer pending under this worker; or missing from the welcome
after a reconnect) is stopped, since its result would no longer count, unless its commitment is being
sent: that one is finished, and its reveal is owed. A job it has
already done on chain (it committed already) is not done again: the job id and the chain's state are
the idempotency keys.

Stopping: `drain()` tells the server to send no more jobs, and `run()` returns once the jobs running
are finished and their results acknowledged (a job that was on its way meanwhile is handed straight
back). `stop_now()` stops the jobs running and hands them back, so another worker gets them at once
instead of after the server's job timeout; `run()` then returns. Reveals still owed resume when a
worker of the same account starts again on the same data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import re
import stat
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import Web3Exception

from ethml import safejson
from ethml.chain.deploy import Deployment
from ethml.coordinator.background import cancel_and_wait, stop_if_cancelled
from ethml.coordinator.permit import sign_login
from ethml.coordinator.schemas import JOB_ID, MAX_FILE_BYTES, WORKER_ID, bounded_detail
from ethml.errors import EthmlError, TransactionReverted
from ethml.ipfs import IpfsClient
from ethml.paths import data_home
from ethml.training import clock, flow
from ethml.training.jobs import Compute
from ethml.training.onchain import secret_file, secrets_dir
from ethml.training.trainer import Opening
from ethml.urls import redact_urls

log = structlog.get_logger("ethml.worker")

#: Seconds a stopping worker waits for the server's answers (releases, the close) before it just goes.
STOP_GRACE = 5.0


#: Seconds between tries of an artifact upload refused for a commitment the coordinator's chain node does
#: not show yet.
UPLOAD_RETRIES = (1.0, 2.0, 4.0, 8.0)

#: Seconds a draining worker waits for the server's answer to its drain before it takes the silence for one (no
#: job comes after the answer; a server that never answers would hold a graceful stop for good).
DRAIN_ANSWER_WAIT = 30.0

#: Seconds a draining worker with nothing left to run waits for the server's answers to its results and releases
#: (a trainer's result may be answered `retry` for a few blocks) before it stops without them.
ANSWER_WAIT = 60.0

#: Releases left unanswered on one connection before the worker takes the server for a broken one and reconnects.
MAX_UNANSWERED_RELEASES = 100

#: The reconnection backoff's first step, in seconds; it doubles on each connection that fails or ends soon, up
#: to `WorkerConfig.max_backoff`.
FIRST_BACKOFF = 0.5

#: Seconds a connection must have stayed logged in for the backoff to start again from its first step when it
#: ends: a server that closes every session soon after the login (its Redis down, a restart in a loop) is
#: backed off from as one that refuses the connection is, instead of being logged in to twice a second.
STABLE_SESSION = 60.0

#: The longest `Retry-After` of a refused handshake that the worker waits for, in seconds (a server that asks
#: for more is retried after this, or after the backoff if it is longer).
RETRY_AFTER_CAP = 60.0

#: Events kept for whoever embeds the worker (`Worker.events`); when nobody reads them, the oldest go.
EVENTS_KEPT = 256

#: The bounds of the load-report interval the server may ask for, in seconds.
HEARTBEAT_BOUNDS = (1.0, 300.0)

#: A challenge's server id and nonce: 1 to 200 printable ASCII characters, no spaces nor line breaks.
_JOB_ID = re.compile(JOB_ID)
_CHALLENGE_TEXT = re.compile(r"[\x21-\x7e]{1,200}")

#: Seconds before a result the server answered `retry` is sent again (a trainer's, whose commitment the
#: server's node did not show yet: it may be a block behind this worker's).
RESULT_RETRY = 3.0


class WorkerRefused(EthmlError):
    """The server refused the login (no stake, wrong signature), or the account lost its stake while it worked:
    retrying will not help."""


#: Contract errors that say the account's stake is gone (unstaked, or slashed below the minimum): every job
#: would fail the same way until it is staked again.
STAKE_GONE = frozenset({"NotStaked", "NothingStaked"})


def reconnect_delay(
    backoff: float, retry_after: float | None = None, draw: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before the next connection: between half `backoff` and all of it, drawn anew each time, so
    that workers cut off at once (by a server's restart) do not come back in step; and no sooner than the
    server's `Retry-After` (up to RETRY_AFTER_CAP)."""
    delay = backoff * (0.5 + 0.5 * draw())
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


def _retry_after(headers: Any) -> float | None:
    """A `Retry-After` in seconds (the form the coordinator sends); None for none, a date or anything else."""
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]+", value.strip()):
        return None
    value = value.strip()
    return RETRY_AFTER_CAP if len(value) > 6 else float(value)


@dataclass
class WorkerConfig:
    server: str  # ws://host:port
    role: str
    capacity: int = 1
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    max_backoff: float = 10.0
    load_interval: float | None = None  # default: what the server asks for
    compute: Compute = field(default_factory=Compute)  # this machine, or a Dask cluster, and the limits
    data_dir: Path = field(default_factory=data_home)  # the blockstore's home and the reveal secrets


#: How many workers of one account and role may run on one data dir at once, each keeping an id of its own.
ID_SLOTS = 64


@contextlib.contextmanager
def worker_identity(data_dir: Path, address: str, role: str) -> Iterator[str]:
    """The worker id this process logs in with, held (an exclusive `flock`) until the block ends: the id of the
    first free slot of this data dir, account and role (`<data dir>/worker/<address>.<role>.<slot>.id`), made
    and written the first time. A worker started again after a crash (`kill -9` included: the kernel releases
    the lock with the process) takes its id back, and with it the jobs the coordinator holds for that id: they
    are sent to it again and, what it did on chain already not being done again, finished, instead of waiting
    out the job timeout and going to another account (an account gets one delivery of a task's training jobs,
    so the task lost that account's try). A second process on the same data dir, account and role, while the
    first runs, takes the next slot's id: one id is never two live processes. Where the data dir cannot hold
    the files (read-only), or every slot is held, the id is a fresh one for this process only."""
    import fcntl

    folder = data_dir / "worker"
    held, worker_id = None, f"{role[0]}{os.getpid()}-{os.urandom(3).hex()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for slot in range(ID_SLOTS):
            # Never through a link planted in the folder (O_NOFOLLOW), and only a regular file of this user's.
            path = folder / f"{address.lower()}.{role}.{slot}.id"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                os.close(fd)
                raise OSError(f"{folder} holds a worker id that is not a regular file of this user's")
            handle = os.fdopen(fd, "r+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            known = handle.read().strip()
            if not re.fullmatch(WORKER_ID, known or "-") or not known.startswith(role[0]):
                known = f"{role[0]}{slot}-{os.urandom(6).hex()}"
                handle.seek(0)
                handle.truncate()
                handle.write(known + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            held, worker_id = handle, known
            break
        else:
            log.warning("worker_id_not_kept", reason=f"all {ID_SLOTS} ids of this data dir are held", id=worker_id)
    except OSError as exc:
        log.warning("worker_id_not_kept", error=str(exc), data_dir=str(data_dir), id=worker_id)
    try:
        yield worker_id
    finally:
        if held is not None:
            held.close()  # (the lock goes with it)


def _http_base(server: str) -> str:
    base = server.rstrip("/")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if base.startswith(ws):
            return http + base[len(ws) :]
    return base


def _welcome_problem(welcome: dict[str, Any]) -> str | None:
    """What is wrong with a welcome's fields, or None: the features, the jobs kept for this worker (`running`)
    and the upload token are read as they are, and the heartbeat asked for as a number of seconds."""
    features, running, token = welcome.get("features"), welcome.get("running"), welcome.get("upload_token")
    heartbeat = welcome.get("heartbeat")
    for name, value in (("features", features), ("running", running)):
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"{name} is not a list of strings"
    if token is not None and not isinstance(token, str):
        return "upload_token is not a string"
    number = type(heartbeat) is int or (type(heartbeat) is float and not math.isnan(heartbeat))  # (ints: any size)
    if heartbeat is not None and not number:
        return "heartbeat is not a number"
    return None


def system_load() -> tuple[float, float]:
    """(CPU %, memory %) of this machine, from /proc (0 where it is not readable)."""
    cpu = mem = 0.0
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
        cpu = min(100.0, os.getloadavg()[0] / (os.cpu_count() or 1) * 100)
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0])
        mem = 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])
    return round(cpu, 1), round(mem, 1)


class Worker:
    def __init__(
        self, config: WorkerConfig, w3: AsyncWeb3[Any], deployment: Deployment, account: LocalAccount, ipfs: IpfsClient
    ) -> None:
        self.config = config
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.ipfs = ipfs
        self.running: dict[str, asyncio.Task[None]] = {}
        self.unacked: dict[str, dict[str, Any]] = {}  # results the server has not acknowledged
        self.done: set[str] = set()
        self.upload_token: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # For embedding and tests; the oldest go when nobody reads them (`_event`).
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=EVENTS_KEPT)
        self._cluster_up = True
        self.duties: dict[int, asyncio.Task[None]] = {}  # reveals owed, by chain task id
        self.jobs: dict[str, dict[str, Any]] = {}  # running job -> the job message (delivery, task, kind)
        self.features: set[str] = set()  # what the server takes besides load reports and results
        self.draining = False
        self.stopped_now = False
        #: Why this worker stopped taking jobs on its own (its account lost its stake), or None.
        self.unstaked: str | None = None
        self._finished = asyncio.Event()  # drained, or stopped now: run() returns
        self._drain_sent = False  # on this connection
        self._drain_acked = False  # on this connection: no job comes after the server's answer
        self._releasing: set[str] = set()  # released on this connection, not answered yet
        self._finishing: set[str] = set()  # revoked while committing: they run on, their slots free
        self._resending: set[str] = set()  # results with a resend waiting (`_send_again`)
        self._answers_since: float | None = None  # draining, nothing running: since when answers are awaited
        self._refused: WorkerRefused | None = None  # why the server refused this worker, once it has
        self._said_refused: str | None = None  # what the server said when it refused this worker while connected
        self._revoking: set[str] = set()  # revoked by the server, being stopped
        self._after_revoke: dict[str, dict[str, Any]] = {}  # sent again while being stopped: runs after
        self._background: set[asyncio.Future[Any]] = set()  # messages sent from sync callers
        self._welcomed_at: float | None = None  # when the current connection was logged in (the loop's clock)

    async def run(self) -> None:
        """Connect, work, reconnect with backoff; returns once drained or stopped now (`drain`,
        `stop_now`), whatever the connection is doing then (logging in, backing off); raises when
        refused."""
        async with aiohttp.ClientSession() as session:  # 300 s per request: the handshake, an upload
            self._session = session
            self._resume_duties()
            connection = asyncio.create_task(self._connect_loop(session), name="worker-connection")
            finished = asyncio.create_task(self._finished.wait(), name="worker-finished")
            try:
                await asyncio.wait({connection, finished}, return_when=asyncio.FIRST_COMPLETED)
                if connection.done():
                    connection.result()  # WorkerRefused
                ws = self._ws
                if ws is not None and not ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                        await asyncio.wait_for(ws.close(), STOP_GRACE)
            finally:
                for waiter in (connection, finished):
                    waiter.cancel()
                await asyncio.gather(connection, finished, return_exceptions=True)
                owed = self._owed()
                for task in owed:
                    self.duties[task].cancel()
            log.info("stopped", drained=not self.stopped_now, reveals_owed=owed)
        if self._refused is not None and self.unstaked is None and not self.stopped_now:
            raise self._refused  # (a drain during the reveals it made first ended the run before it was raised)
        if self.unstaked is not None and not self.stopped_now:
            raise WorkerRefused(
                f"stopped taking jobs: {self.unstaked}; it made the reveals it owed first; start the worker again "
                "once the account is staked"
            )

    async def _connect_loop(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF
        while True:
            stop_if_cancelled()  # a cancel that 3.11's asyncio.timeout turned into TimeoutError
            self._welcomed_at = None
            retry_after: float | None = None
            try:
                code = await self._session_once(session)
                why = "connection lost" if code in (None, 1006) else f"connection closed ({code})"
            except WorkerRefused as exc:
                self._refused = exc  # no connection comes again, no answer is awaited
                if self.unstaked is None:
                    await self._reveals_before_exit(str(exc))
                    raise
                # Its stake is gone, so no login is let in any more: no connection, but the reveals it owes need
                # none (nor a stake), and go on. Results not acknowledged come back to the server by its job timeout.
                log.warning("no_connection_for_reveals", owed=self._owed())
                self._ws = None
                self.unacked.clear()
                self._releasing.clear()
                self._check_drained()
                await self._finished.wait()
                return
            except aiohttp.WSServerHandshakeError as exc:  # a 429 (its logins' rate), a 503, a proxy's answer
                retry_after = _retry_after(exc.headers)
                why = f"handshake refused: {exc.status} {exc.message}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            if self._finished.is_set():  # its own close as it stops: nothing to come back to
                return
            if self._welcomed_at is not None and loop.time() - self._welcomed_at >= STABLE_SESSION:
                backoff = FIRST_BACKOFF
            delay = reconnect_delay(backoff, retry_after)
            log.warning("disconnected", error=why, retry_in=round(delay, 2))
            self._event({"event": "disconnected", "reason": why, "retry_in": delay})
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.config.max_backoff)

    async def _reveals_before_exit(self, why: str) -> None:
        """Refused (by the server, or an admin's disconnect) while reveals are owed or a commitment is on its way:
        the jobs not committing yet stop, the committing ones finish, and the reveals owed are made, before
        `run()` raises, since they need no login and each saves a bond; `stop_now()` still stops at once."""
        self._ws = None
        for job in [j for j in self.running if not self._committing(j)]:
            self.running.pop(job).cancel()
            self.jobs.pop(job, None)
        while not self.stopped_now:
            owed, committing = self._owed(), sorted(self.running)
            if not (owed or committing):
                return
            log.error("refused_reveals_first", error=why, owed=owed, committing=committing)
            await asyncio.wait([*self.running.values(), *(self.duties[task] for task in owed)])

    def drain(self) -> list[str]:
        """Stop gracefully: no new jobs; `run()` returns once the running ones are finished and their
        results acknowledged. Returns the jobs running now. Against a server that does not take a
        drain (an older `ethml serve`) this is `stop_now()`."""
        if self.draining:
            return sorted(self.running)
        ws = self._ws
        if ws is not None and not ws.closed and "drain" not in self.features:
            log.warning("drain_unsupported", server=self.config.server)
            self.stop_now()
            return []
        self.draining = True
        log.info("draining", running=sorted(self.running))
        if ws is not None and not ws.closed:
            self._spawn(self._send_drain(ws))
        self._check_drained()
        return sorted(self.running)

    def stop_now(self) -> tuple[list[str], list[str]]:
        """Stop at once: cancel the running jobs and hand them back to the server (which gives them to
        another worker now); `run()` then returns. A job whose commitment is being sent (its secret is
        written) is finished instead, for at most a minute: handed back, it would be done twice on
        chain. Returns the jobs handed back and those being finished."""
        if self.stopped_now:
            return [], []
        self.draining = self.stopped_now = True
        kept = sorted(j for j in self.running if self._committing(j))
        handed = sorted(j for j in self.running if j not in kept)
        for job in handed:
            self.running.pop(job).cancel()
        self._spawn(self._stop_now(handed, kept))
        return handed, kept

    async def _stop_now(self, handed: list[str], kept: list[str]) -> None:
        try:
            ws = self._ws
            if ws is not None and not ws.closed and "release" in self.features:
                await self._send_drain(ws)
                sends = [self._release(job, self.jobs.get(job, {}).get("delivery")) for job in handed]
                await asyncio.gather(*[f for f in sends if f is not None])
            for job in handed:
                self.jobs.pop(job, None)
            self._check_drained()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), 60.0 if kept else STOP_GRACE)
        finally:
            self._finished.set()

    async def _send_drain(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if not self._drain_sent:
            self._drain_sent = True
            if await self._send(ws, {"type": "drain"}):
                self._spawn(self._drain_deadline(ws))

    async def _drain_deadline(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """A drain the server has not answered in DRAIN_ANSWER_WAIT is taken as answered: a job that still comes
        is handed straight back, as any job after the drain is."""
        await asyncio.sleep(DRAIN_ANSWER_WAIT)
        if ws is self._ws and not self._drain_acked:
            log.warning("drain_unanswered", server=self.config.server, seconds=DRAIN_ANSWER_WAIT)
            self._drain_acked = True
            self._check_drained()

    def _release(self, job: str, delivery: int | None) -> asyncio.Future[Any] | None:
        """Send a release on the live connection, counted in `_releasing` until answered (or the
        connection is gone); None when there is nothing to send it on."""
        ws = self._ws
        if delivery is None or ws is None or ws.closed or "release" not in self.features:
            return None
        if len(self._releasing) >= MAX_UNANSWERED_RELEASES:
            # A server sending jobs it never takes back: a broken one. Its connection ends (the releases unanswered
            # with it); the worker logs in again after a backoff.
            log.warning("releases_unanswered", count=len(self._releasing), server=self.config.server)
            self._spawn(ws.close())
            return None
        self._releasing.add(job)

        async def send() -> None:
            if not await self._send(ws, {"type": "release", "job": job, "delivery": delivery}):
                self._releasing.discard(job)
                self._check_drained()

        return self._spawn(send())

    def _revoke(self, job_id: str, reason: str) -> None:
        """The server took the job back (past its time limit, or no longer pending under this worker):
        its result would not count, so it stops, and its slot is free. A job whose commitment is being
        sent is finished instead: its commitment may be on its way to the chain, and it owes the reveal."""
        task = self.running.get(job_id)
        if task is None or job_id in self._revoking:
            return  # finished (its result is answered as refused), never started, or being stopped
        self._revoking.add(job_id)
        self._spawn(self._stop_revoked(job_id, task, reason))

    async def _stop_revoked(self, job_id: str, task: asyncio.Task[None], reason: str) -> None:
        """Cancel a revoked job until it ends (Python 3.11 can drop a cancellation inside a wait_for), but
        never once its commitment's secret is written: from then on it runs to its end."""
        try:
            if not await cancel_and_wait(task, None, unless=lambda: self._committing(job_id)):
                log.warning("job_revoked_finishing", job=job_id, reason=reason)
                if self.running.get(job_id) is task:
                    self._finishing.add(job_id)  # its slot is free on the server's side: not counted as busy
                return
            if not task.cancelled():
                return  # it finished first, and reported its result
            job = self.jobs.get(job_id)
            if job is not None and self._committing(job_id):  # cancelled as it wrote its secret
                self._owe_reveal(job["kind"], int(job["chain_task"]))
            if self.running.get(job_id) is task:
                del self.running[job_id]
                self.jobs.pop(job_id, None)
            log.warning("job_revoked", job=job_id, reason=reason)
            self._event({"event": "revoked", "job": job_id, "reason": reason})
            self._check_drained()
        finally:
            self._revoking.discard(job_id)
            again = self._after_revoke.pop(job_id, None)
            if again is not None:
                # The new delivery: it joins the run that goes on (committing), or runs afresh (the chain's
                # state keeps a finished run's transactions from being sent twice).
                self.done.discard(job_id)
                self._start(again)

    def _committing(self, job_id: str) -> bool:
        """Whether the job has written the secret of its commitment (so the commitment may be on chain)."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        kind = "submission" if job["kind"] == "train" else "scores"
        return secret_file(
            self.config.data_dir, self.deployment, kind, int(job["chain_task"]), self.account.address
        ).exists()

    def _event(self, event: dict[str, Any]) -> None:
        """Queue an event for whoever embeds the worker: the oldest is dropped when EVENTS_KEPT wait unread (the
        `ethml worker` command reads none), so a server's messages never pile up in memory."""
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        future = asyncio.ensure_future(coro)
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        return future

    async def _send_again(self, job_id: str, result: dict[str, Any]) -> None:
        """Send a result again after RESULT_RETRY, if it is still the one unacknowledged (on a reconnect every
        unacknowledged result is sent anyway); counted in `_resending` by the caller until then."""
        ws = self._ws
        try:
            await asyncio.sleep(RESULT_RETRY)
        finally:
            self._resending.discard(job_id)
        if ws is not None and self.unacked.get(job_id) is result:
            await self._send(ws, result)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> bool:
        """Whether the message went out (False: the connection is gone)."""
        if ws is not self._ws or ws.closed:
            return False
        try:
            await ws.send_json(message)
        except (ConnectionError, RuntimeError):
            return False
        return True

    def _check_drained(self) -> None:
        """Draining, nothing running, every result acknowledged and every release answered, and no job
        can still be on its way (the server answered the drain, or there is no connection): done."""
        settled = self._ws is None or self._drain_acked or "drain" not in self.features
        if not (self.draining and settled and not self.running):
            return
        if (self.unacked or self._releasing) and self._refused is None:
            # Answers awaited: at most ANSWER_WAIT from when nothing was left to run (a server that never answers
            # would hold the stop for good).
            now = time.monotonic()
            if self._answers_since is None:
                self._answers_since = now
                self._spawn(self._answers_deadline())
            if now - self._answers_since < ANSWER_WAIT:
                return
            log.warning("answers_not_received", results=sorted(self.unacked), releases=sorted(self._releasing))
        if self.unstaked is not None and not self.stopped_now and self._owed():
            return  # the stake is gone, not the bonds: the reveals it owes first (they need no stake)
        self._finished.set()

    async def _answers_deadline(self) -> None:
        await asyncio.sleep(ANSWER_WAIT)
        self._check_drained()

    def _owed(self) -> list[int]:
        """The tasks whose reveal this worker still owes (running in the background)."""
        return sorted(task for task, duty in self.duties.items() if not duty.done())

    async def _login_message(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """The next message during the login, within `timeout` (protocol pings do not extend it)."""
        async with asyncio.timeout(timeout):
            msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"the coordinator closed the connection during the login ({msg.type.name})")
        try:
            data = safejson.loads(msg.data)
        except ValueError:
            raise ConnectionError("the coordinator sent a malformed message during the login") from None
        if not isinstance(data, dict):
            raise ConnectionError("the coordinator sent a malformed message during the login")
        return data

    async def _session_once(self, session: aiohttp.ClientSession) -> int | None:
        """One connection, from the handshake to its end; the close code the server sent (None for a connection
        that dropped), or WorkerRefused for a refusal or an admin's disconnect. `_welcomed_at` says when it was
        logged in (None until then)."""
        url = self.config.server.rstrip("/") + "/ws/worker"
        async with session.ws_connect(url, heartbeat=10, max_msg_size=64 * 1024) as ws:
            challenge = await self._login_message(ws, 30)
            server_id, nonce = challenge.get("server"), challenge.get("nonce")
            if not all(isinstance(t, str) and _CHALLENGE_TEXT.fullmatch(t) for t in (server_id, nonce)):
                raise ConnectionError(f"the coordinator sent a malformed challenge: {str(challenge)[:200]}")
            signature = sign_login(self.account.key, str(server_id), str(nonce), self.config.role)
            await ws.send_json(
                {
                    "type": "auth",
                    "role": self.config.role,
                    "address": self.account.address,
                    "worker_id": self.config.worker_id,
                    "capacity": self.config.capacity,
                    "signature": signature,
                }
            )
            welcome, early = await self._welcome(ws)
            if welcome.get("type") == "refused":
                raise WorkerRefused(f"the coordinator refused this worker: {str(welcome.get('message'))[:200]}")
            problem = _welcome_problem(welcome)
            if problem is not None:  # no session on terms this worker cannot read: again after a backoff
                raise ConnectionError(f"the coordinator sent a malformed welcome ({problem})")
            self.features = set(welcome.get("features") or [])
            self._drain_sent = self._drain_acked = False
            self._releasing.clear()
            self._ws = ws
            self._welcomed_at = asyncio.get_running_loop().time()
            if self.draining and not self.stopped_now and "drain" not in self.features:
                log.warning("drain_unsupported", server=self.config.server)
                self.stop_now()  # an older server would keep sending jobs: stop as it always did
            self.upload_token = welcome.get("upload_token")
            log.info("connected", server=self.config.server, worker=self.config.worker_id, role=self.config.role)
            adopted = welcome.get("running")
            self._event({"event": "connected", "adopted": adopted or []})
            if isinstance(adopted, list):
                # The server keeps for this worker the jobs still pending under it; one it runs that is not
                # among them was taken back while it was away (and went to another worker): its result
                # would not count.
                for job_id in [j for j in self.running if j not in adopted]:
                    self._revoke(job_id, "taken back while this worker was disconnected")
            if self.draining and "drain" in self.features:  # still finishing its jobs after a reconnect
                await self._send_drain(ws)
            for result in list(self.unacked.values()):  # results finished while disconnected
                await ws.send_json(result)
            low, high = HEARTBEAT_BOUNDS
            interval = float(self.config.load_interval or min(high, max(low, welcome.get("heartbeat") or 5.0)))
            loads = asyncio.create_task(self._report_load(ws, interval))
            closed_with: int | None = None
            try:
                for message in early:  # sent before the welcome (an older server could)
                    self._on_message(message)
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        # The server's code, as it sent it: when the server cut the connection before this worker
                        # answered its close, aiohttp's `close_code` says 1006 (the answer failed) instead.
                        closed_with = msg.data
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    try:
                        data: Any = safejson.loads(msg.data)
                    except ValueError:
                        data = None
                    if not isinstance(data, dict):
                        log.warning("server_message_malformed", message=str(msg.data)[:200])
                        continue
                    self._on_message(data)
            finally:
                loads.cancel()
                self._ws = None
                self._releasing.clear()  # answered or not, the server is done with them
                self._check_drained()
            if closed_with is None:
                closed_with = ws.close_code
            if closed_with == 4003:
                raise WorkerRefused("disconnected by an admin")
            if closed_with == 4001:  # refused while connected (its stake is gone): the server said why first
                said = f": {self._said_refused}" if self._said_refused else f" ({closed_with})"
                raise WorkerRefused(f"the coordinator refused this worker{said}")
            return closed_with

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The server's answer to the login (welcome or refused) within 60 s, and the messages that came
        before it, to be handled once connected (an older server could send a job first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        early: list[dict[str, Any]] = []
        while True:
            data = await self._login_message(ws, max(0.0, deadline - loop.time()))
            if data.get("type") in ("welcome", "refused"):
                return data, early
            if data.get("type") == "unavailable":  # its Redis or chain RPC failed: try again after a backoff
                raise ConnectionError(f"the coordinator is unavailable: {str(data.get('message'))[:200]}")
            if len(early) >= 1000:
                raise ConnectionError("the coordinator sent 1000 messages without answering the login")
            early.append(data)

    def _on_message(self, data: dict[str, Any]) -> None:
        """One message from the server on a live connection (one it cannot read is logged and skipped)."""
        kind = data.get("type")
        malformed = kind in ("job", "ack", "released", "revoked") and not (
            isinstance(data.get("job"), str) and _JOB_ID.fullmatch(data["job"])
        )
        if kind == "job" and not malformed:
            malformed = data.get("kind") not in ("train", "validate") or type(data.get("chain_task")) is not int
        if malformed:
            log.warning("server_message_malformed", message=str(data)[:200])
            return
        if kind == "job":
            self._start(data)
        elif kind == "ack":
            if data.get("retry") and data["job"] in self.unacked:  # not counted yet: again in a moment
                if data["job"] not in self._resending:  # (one resend waiting per result, however many acks)
                    log.info("result_retry", job=data["job"], reason=str(data.get("refused"))[:200])
                    self._resending.add(data["job"])
                    self._spawn(self._send_again(data["job"], self.unacked[data["job"]]))
                return
            self.unacked.pop(data["job"], None)
            if data.get("refused"):
                log.warning("result_refused", job=data.get("job"), reason=data["refused"])
            self._event({"event": "acked", **data})
        elif kind == "draining":
            self._drain_acked = True
            self._event({"event": "draining", **data})
        elif kind == "released":
            self._releasing.discard(data["job"])
            if not data.get("released"):
                log.warning("release_refused", job=data.get("job"), reason=data.get("refused"))
            self._event({"event": "released", **data})
        elif kind == "revoked":
            self._revoke(str(data.get("job")), str(data.get("reason") or "taken back"))
        elif kind == "error":
            log.warning("server_error", message=data.get("message"))
        elif kind == "refused":  # the close (4001) follows
            self._said_refused = str(data.get("message"))[:200]
        self._check_drained()

    async def _report_load(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while not ws.closed:
            cpu, memory = system_load()
            report: dict[str, Any] = {"type": "load", "running": len(self.running), "cpu": cpu, "memory": memory}
            if self.config.compute.cluster is not None:
                report["cluster"] = await self._cluster_size(min(2.0, interval))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json(report)
            await asyncio.sleep(interval)

    async def _cluster_size(self, timeout: float) -> dict[str, int]:  # noqa: ASYNC109
        """The Dask cluster's workers and threads now (0 while its scheduler does not answer)."""
        from ethml.training.cluster import cluster_info

        assert self.config.compute.cluster is not None
        probe = dataclasses.replace(self.config.compute.cluster, connect_timeout=timeout)
        try:
            info = await asyncio.to_thread(cluster_info, probe)
        except EthmlError as exc:
            if self._cluster_up:
                log.warning("cluster_unreachable", error=str(exc))
            self._cluster_up = False
            return {"workers": 0, "threads": 0}
        if not self._cluster_up:
            log.info("cluster_back", workers=info.workers)
        self._cluster_up = True
        return {"workers": info.workers, "threads": info.threads}

    def _start(self, job: dict[str, Any]) -> None:
        job_id = job["job"]
        if job_id in self._revoking:  # delivered again (a seat only this worker may take) while the revoked
            self._after_revoke[job_id] = job  # run is being stopped: it starts once that run has ended
            return
        if job_id in self.running:
            # Sent again (after a reconnect, or taken back while its commitment was being sent and then
            # delivered to this worker again): it runs on, and its result answers the newest delivery.
            self.jobs[job_id]["delivery"] = job.get("delivery")
            return
        if job_id in self.done and job_id in self.unacked:
            return
        if self.draining:  # sent before the server read the drain: straight back, for another worker
            self._release(job_id, job.get("delivery"))
            log.info("job_handed_back", job=job_id, delivery=job.get("delivery"))
            return
        wanted = "train" if self.config.role == "trainer" else "validate"
        # Not counted: jobs the server took back that are being stopped (their slots are free on its side).
        busy = len(self.running.keys() - self._revoking - self._finishing)
        if job["kind"] != wanted or busy >= self.config.capacity:
            # Never run on the server's word alone: a job of the other role (a trainer would pay a validator's
            # gas), or one beyond the capacity this worker announced (each runs in a process of its own, and a
            # training job's commitment locks a bond). Handed back, for another worker.
            why = f"a {job['kind']} job for a {self.config.role}" if job["kind"] != wanted else "over capacity"
            log.warning("job_refused", job=job_id, reason=why, running=busy, capacity=self.config.capacity)
            self._release(job_id, job.get("delivery"))
            return
        self.jobs[job_id] = job
        self.running[job_id] = asyncio.create_task(self._do(job), name=f"job-{job_id}")

    async def _do(self, job: dict[str, Any]) -> None:
        job_id = job["job"]
        started = time.monotonic()
        log.info("job_started", job=job_id, delivery=job.get("delivery"))
        self._event({"event": "job_started", **job})
        try:
            detail, tx = await self._execute(job)
            result = {"type": "result", "job": job_id, "ok": True, "detail": detail, "tx": tx}
        except (EthmlError, Web3Exception, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Said to the server: no URL whole (an RPC provider's key is often in its path; aiohttp's errors quote it).
            result = {"type": "result", "job": job_id, "ok": False, "detail": redact_urls(str(exc)), "tx": None}
            if isinstance(exc, TransactionReverted) and exc.error is not None and exc.error.name in STAKE_GONE:
                self.unstaked = exc.reason
        except Exception as exc:  # a bug: reported as a failed job, not a job held (and a drain stuck) for good
            log.exception("job_crashed", job=job_id)
            detail = redact_urls(f"the worker failed: {type(exc).__name__}: {exc}")
            result = {"type": "result", "job": job_id, "ok": False, "detail": detail, "tx": None}
        result["detail"] = bounded_detail(result["detail"])  # (the server reads no message over 16 KiB)
        result["delivery"] = job.get("delivery")
        result["seconds"] = round(time.monotonic() - started, 2)
        if self._refused is None:  # (refused: no answer can come any more, nothing to wait for)
            self.unacked[job_id] = result
        self.done.add(job_id)
        self.running.pop(job_id, None)
        self.jobs.pop(job_id, None)
        self._finishing.discard(job_id)
        log.info("job_finished", job=job_id, ok=result["ok"], seconds=result["seconds"])
        self._event({"event": "job_finished", **result})
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json(result)
        if self.unstaked is not None and not self.draining:
            # Every job would fail the same way, and each failure costs this account its one try at the task:
            # no more jobs; the ones running are finished and reported, then the worker exits saying why.
            log.error(
                "stake_lost",
                account=self.account.address,
                role=self.config.role,
                reason=self.unstaked,
                reveals_owed=self._owed(),  # made before it exits: a reveal needs no stake, and saves a bond
            )
            self.drain()
        self._check_drained()

    async def _execute(self, job: dict[str, Any]) -> tuple[Any, str | None]:
        task_id = int(job["chain_task"])
        home = self.config.data_dir
        where = (self.w3, self.deployment, self.account, self.ipfs, task_id)

        def progress(message: str) -> None:
            # For validation, one line per artifact: its vote and why (the re-fit rule, claimSlack, checks).
            log.info("job_progress", job=job["job"], message=message)

        if job["kind"] == "train":
            try:
                out = await flow.train_and_submit(
                    *where,
                    data_dir=home,
                    compute=self.config.compute,
                    progress=progress,
                    max_artifact=MAX_FILE_BYTES,  # what POST /api/files takes: the upload comes before the reveal
                    # A window already closed when the commitment is made (or a job delivered again after it) is
                    # revealed at once, here: the artifact must be uploaded first then too.
                    on_reveal=self._upload,
                )
            except Exception:
                # Failed after the secret was written (the commitment sent, the upload or the reveal refused):
                # the reveal is still owed and retried in the background, or the bond is lost.
                if secret_file(home, self.deployment, "submission", task_id, self.account.address).exists():
                    self._owe_reveal("train", task_id)
                raise
        else:
            try:
                out = await flow.validate_task(*where, data_dir=home, compute=self.config.compute, progress=progress)
            except flow.NotDrawn as exc:
                return {"nothing_to_do": str(exc)}, None
            except TransactionReverted as exc:
                if exc.error is None or exc.error.name not in flow.NOT_THIS_VOTE:
                    raise
                return {"nothing_to_do": exc.reason}, None
        if not out["revealed"]:
            self._owe_reveal(job["kind"], task_id)
        return out, None

    def _owe_reveal(self, kind: str, task_id: int) -> None:
        """Reveal in the background once the window opens (a duty, not a job: no capacity held)."""
        running = self.duties.get(task_id)
        if running is not None and not running.done():
            return
        duty = asyncio.create_task(self._reveal(kind, task_id), name=f"reveal-{task_id}")
        duty.add_done_callback(lambda _done: self._check_drained())  # a worker that lost its stake waits for them
        self.duties[task_id] = duty

    async def _reveal(self, kind: str, task_id: int) -> None:
        backoff = 1.0
        deadline: int | None = None  # a submission deadline to wait past before the next try
        while True:
            try:
                if deadline is not None:
                    await clock.wait_past(
                        self.w3, deadline, f"task {task_id}'s submission deadline", None, self.account
                    )
                if kind == "train":
                    await flow.reveal_submission(
                        self.w3,
                        self.deployment,
                        self.account,
                        task_id,
                        self.config.data_dir,
                        wait=True,
                        on_reveal=self._upload,
                    )
                else:
                    await flow.reveal_scores(
                        self.w3, self.deployment, self.account, task_id, self.config.data_dir, wait=True
                    )
                log.info("revealed", task=task_id, kind=kind)
                self._event({"event": "revealed", "task": task_id, "kind": kind})
                return
            except flow.NoSubmission as exc:
                if deadline is not None:  # none in a block past the deadline: none can be mined any more
                    log.warning("reveal_given_up", task=task_id, kind=kind, error=str(exc))
                    return
                # A commitment whose receipt was not seen in time may still be mined in a block stamped up to
                # the deadline: once a block is past it, the chain's answer is final.
                deadline = exc.submit_deadline
                log.info("reveal_waits", task=task_id, kind=kind, error=str(exc), until=deadline)
                continue
            except flow.TaskError as exc:  # closed, or no secret: nothing more this worker can do
                log.warning("reveal_given_up", task=task_id, kind=kind, error=str(exc))
                return
            except TransactionReverted as exc:
                if exc.error is not None and exc.error.name in ("TooLate", "TaskClosed", "AlreadyRevealed"):
                    log.warning("reveal_given_up", task=task_id, kind=kind, error=exc.reason)
                    return
                log.warning("reveal_retry", task=task_id, kind=kind, error=str(exc), retry_in=backoff)
            except (EthmlError, Web3Exception, aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Web3Exception: a receipt not seen in time (TimeExhausted), a node's refusal (Web3RPCError).
                log.warning("reveal_retry", task=task_id, kind=kind, error=str(exc), retry_in=backoff)
            except Exception:  # a bug, or an answer nobody foresaw: the bond is at stake, so it is tried again
                log.exception("reveal_retry", task=task_id, kind=kind, retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def _resume_duties(self) -> None:
        """The reveals a previous run of this worker committed to and did not make (secrets in the data dir)."""
        kind = "submission" if self.config.role == "trainer" else "scores"
        suffix = f"-{self.account.address.lower()}.json"
        folder = secrets_dir(self.config.data_dir, self.deployment)
        for path in sorted(folder.glob(f"{kind}-*{suffix}")) if folder.is_dir() else []:
            task = path.name.removeprefix(f"{kind}-").removesuffix(suffix)
            if task.isdigit():
                self._owe_reveal("train" if kind == "submission" else "validate", int(task))

    async def _upload(self, opening: Opening) -> None:
        """Give the model artifact of this worker's submission to the coordinator, so validators anywhere fetch
        it by CID; with the opening of the commitment, which the coordinator checks against the chain. A
        coordinator holding the whole file already answers 200 without reading the body (a reveal retried, a
        restart); a block at the CID is no proof of that, so the worker does not ask first."""
        base, cid = _http_base(self.config.server), opening.model_cid
        data = await self.ipfs.cat(cid, max_size=flow.ARTIFACT_LIMIT)
        headers = {
            "X-Worker-Token": self.upload_token or "",
            "X-Task": str(opening.task),
            "X-Artifact-Cid": cid,
            "X-Artifact-Sha256": opening.sha256,
            "X-Artifact-Claim": str(opening.claim),
            "X-Artifact-Salt": opening.salt,
            "Content-Type": "application/octet-stream",
        }
        for wait in (*UPLOAD_RETRIES, None):
            # Never redirected: the opening's headers and the token are for this coordinator alone.
            async with self._session.post(
                base + "/api/files", data=data, headers=headers, allow_redirects=False
            ) as response:
                if response.status in (200, 201):
                    return
                if response.status != 403 or wait is None:
                    raise EthmlError(
                        f"uploading the model artifact failed: HTTP {response.status} {await response.text()}"
                    )
            # 403: the coordinator's chain node may not show the commitment yet (another node, a block behind).
            await asyncio.sleep(wait)
