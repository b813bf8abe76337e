"""GET /ws/worker: the workers' WebSocket. After the login (`worker_login`), a worker sends load
reports (its heartbeat), job results, and when it stops a drain or the jobs it hands back; the server
sends jobs (`dispatch`) and acknowledgements. The login has `login_within` seconds, pings or not; a
logged-in worker's messages are read at most at its account's message rate, and its pings and pongs at
most at CONTROL_RATE a connection; only its load reports keep it connected, and a trainer's stake is
checked again on them every `stake_recheck` seconds."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from pydantic import ValidationError
from web3.exceptions import Web3Exception

from ethml.coordinator.appkeys import CHAIN, CONFIG, DISPATCHER, METRICS, STORE
from ethml.coordinator.auth import client_address
from ethml.coordinator.dispatch import CONTROL_BURST, CONTROL_RATE, UNPROVEN, WorkerConn, take_token, token_wait
from ethml.coordinator.edge import BACKEND_ERRORS
from ethml.coordinator.routes.worker_login import STAKE_READ_WAIT, login, refuse, take_login_token, unavailable
from ethml.coordinator.schemas import (
    WORKER_MESSAGE,
    Drain,
    JobRelease,
    JobResult,
    LoadReport,
    WorkerMessage,
    first_error,
)
from ethml.training.onchain import ROLES

#: Seconds between renewals of a connected worker's upload token (on its load reports).
TOKEN_RENEWAL = 3600.0

#: The longest message of a logged-in worker that is read: a load report, a result (its `detail` cut to
#: DETAIL_CHARS by the worker), a release or a drain is far shorter. A longer one is answered with an error.
MESSAGE_CHARS = 16 * 1024

#: Pings and pongs a client may send before its login message: a worker's own heartbeat pings once in 10 s at most,
#: and its login takes far less. Each ping costs the server a pong: answered inside aiohttp's read, a client that
#: never logged in had 641,800 answered in 6 s.
LOGIN_PINGS = 10

#: Seconds a closing connection waits for the client's own close frame (aiohttp reads and drops what comes
#: meanwhile: 1.3 GB of pings in its default 10 s from one client refused at its login).
CLOSE_WAIT = 2.0

#: WebSocket control frames, which aiohttp leaves to this route (`autoping=False`) so that they are counted.
CONTROL = (WSMsgType.PING, WSMsgType.PONG)

log = structlog.get_logger("ethml.coordinator")

routes = web.RouteTableDef()


@routes.get("/ws/worker")
async def worker_socket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    cfg, store, dispatcher = app[CONFIG], app[STORE], app[DISPATCHER]
    # Protocol pings catch dead TCP connections; a worker busy in a training job still answers them.
    # Pings and pongs are read here, not answered inside aiohttp's read, so that they are counted (`_control`).
    ws = web.WebSocketResponse(
        heartbeat=max(10.0, cfg.heartbeat_interval * 3), max_msg_size=64 * 1024, autoping=False, timeout=CLOSE_WAIT
    )
    if ws.can_prepare(request).ok:  # a request that is no WebSocket handshake gets its 400 and takes no login
        await take_login_token(request)  # before the upgrade: a 429 is an HTTP answer
    await ws.prepare(request)
    nonce = secrets.token_hex(16)
    conn: WorkerConn | None = None
    try:
        challenge = {"type": "challenge", "nonce": nonce, "server": cfg.instance, "chain_id": app[CHAIN].chain_id}
        try:
            await ws.send_json(challenge)
            # One deadline for the login: `receive(timeout=...)` starts its timer again after each ping or pong
            # (which aiohttp answers inside it), so a client pinging every few seconds never had to log in.
            async with asyncio.timeout(cfg.login_within):
                msg = await _login_message(ws)
        except ConnectionError:
            return ws  # hung up at once
        except TimeoutError:
            await refuse(ws, f"no login within {cfg.login_within:g} s", request.transport)
            return ws
        if msg is None:
            await refuse(ws, f"more than {LOGIN_PINGS} pings or pongs before the login", request.transport)
            return ws
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            # before its login: no one to answer
            log.info("worker_hung_up", client=client_address(request, cfg.trusted_proxies))
            return ws
        conn = await login(app, ws, msg, nonce, request.transport)
        if conn is None:
            return ws
        async for msg in ws:
            if msg.type in CONTROL:
                await _control(app, conn, msg)
                continue
            if msg.type != WSMsgType.TEXT:
                break
            message = _parse(msg.data)
            if not (isinstance(message, LoadReport) and conn.report_on_time(cfg.heartbeat_interval / 2)):
                # Each message costs a log line or Redis calls: an account's sockets are no way around the HTTP
                # limits. Its messages are read at the rate (the rest wait in the socket's buffers); none is cut.
                # (A load report at the worker's pace is not counted: an account's idle workers must not wait on
                # its busy ones for their heartbeat, nor their pings behind it.)
                wait = dispatcher.message_wait(conn.address, cfg.worker_message_rate, cfg.worker_message_burst)
                await _read_late(app, conn, wait, "worker_throttled", cfg.worker_message_rate)
            started = conn.handling_since = time.monotonic()
            try:
                if not await _handle(app, conn, message, started):
                    break
            finally:
                conn.busy += time.monotonic() - started
                conn.handling_since = None
    except BACKEND_ERRORS as exc:
        # Redis or the chain RPC failed (during the login, or serving the worker): the socket is upgraded, so
        # no HTTP 503 can be written on it; the worker is told and reconnects. (Sends to a worker that hung
        # up fail quietly, so a hang-up is not taken for a backend's failure.)
        log.warning("worker_socket_unavailable", error=str(exc) or type(exc).__name__, worker=conn and conn.consumer)
        await unavailable(ws, request.transport)
    finally:
        if request.transport is not None:
            # A client that stops reading holds a closed connection for good: asyncio's close waits, without a
            # limit, for what the kernel still has to send it (a review: 2.3 MB queued, the socket still open 40 s
            # after the end). Cut after CLOSE_WAIT (a no-op on a connection closed already).
            asyncio.get_running_loop().call_later(CLOSE_WAIT, request.transport.abort)
        if conn is not None:
            try:
                if dispatcher.conns.get(conn.consumer) is conn:  # not a newer connection of the worker
                    del dispatcher.conns[conn.consumer]
                    with contextlib.suppress(*BACKEND_ERRORS):  # Redis down: the record expires with time
                        await store.drop_worker(conn.consumer, conn.session)
            finally:
                await conn.stop()
                log.info("worker_left", worker=conn.consumer, running=list(conn.running))
    return ws


async def _login_message(ws: web.WebSocketResponse) -> Any:
    """The client's first message other than a ping or a pong (its pings answered), or None once it has sent more
    than LOGIN_PINGS of those (the one over is not answered)."""
    for _ in range(LOGIN_PINGS):
        msg = await ws.receive()
        if msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type is not WSMsgType.PONG:
            return msg
    msg = await ws.receive()
    return None if msg.type in CONTROL else msg


async def _control(app: web.Application, conn: WorkerConn, msg: Any) -> None:
    """A logged-in worker's ping (answered, after what was queued for it before) or pong (the answer to the server's
    heartbeat, or unasked), read at most at CONTROL_RATE for the connection."""
    conn.control_bucket = take_token(conn.control_bucket, CONTROL_RATE, CONTROL_BURST, time.monotonic())
    await _read_late(app, conn, token_wait(conn.control_bucket, CONTROL_RATE), "worker_pings_throttled", CONTROL_RATE)
    if msg.type is WSMsgType.PING:
        conn.post_pong(msg.data)  # through the connection's writer, within its send timeout


async def _read_late(app: web.Application, conn: WorkerConn, wait: float, event: str, rate: float) -> None:
    """Wait `wait` seconds before handling what the worker sent (over its rate), counted and logged (once per
    connection per 10 s)."""
    if wait <= 0:
        return
    app[METRICS].worker_messages_delayed.inc()
    if time.monotonic() - conn.throttled_logged >= 10:
        conn.throttled_logged = time.monotonic()
        log.warning(event, worker=conn.consumer, rate=rate)
    await asyncio.sleep(wait)


def _parse(data: str) -> WorkerMessage | str:
    """A logged-in worker's message, or what is wrong with it."""
    if len(data) > MESSAGE_CHARS:  # (what a worker sends is far shorter; not parsed)
        return f"message: over {MESSAGE_CHARS} characters"
    try:
        return WORKER_MESSAGE.validate_json(data)
    except ValidationError as exc:
        where, problem = first_error(exc)
        return f"{where or 'message'}: {problem}"


async def _handle(app: web.Application, conn: WorkerConn, message: WorkerMessage | str, started: float) -> bool:
    """One message of a logged-in worker (read at `started`); False once the connection is to end."""
    cfg, store = app[CONFIG], app[STORE]
    if isinstance(message, str):
        await conn.send({"type": "error", "message": message})
        return True
    if isinstance(message, LoadReport):
        # The heartbeat: only a load report keeps the worker connected (it is what writes the worker's record
        # and reads an admin's disconnection); other messages alone would keep a worker that /api/workers does
        # not list, and no admin can disconnect, taking jobs. The time the server spends on the worker's
        # messages does not count as silence (`WorkerConn.silent_for`): a load report that waited behind
        # results whose commitments a slow chain node took seconds to show came late through no fault of its.
        conn.last_seen, conn.busy = started, 0.0
        if not await _still_staked(app, conn):
            return False
        conn.cpu, conn.memory = message.cpu, message.memory
        conn.cluster = message.cluster.model_dump() if message.cluster is not None else None
        # (Not written while the worker's latest login is another connection's: this one takes no job.)
        await store.put_worker(conn.view(), cfg.heartbeat_timeout)
        if conn.upload_token is not None and time.monotonic() - conn.token_renewed >= TOKEN_RENEWAL:
            # A worker connected for days still uploads its models: its token lives as long as it.
            await store.renew_upload_token(conn.upload_token)
            conn.token_renewed = time.monotonic()
        if await store.take_kick(conn.consumer, conn.session):
            await conn.close(4003, b"disconnected by an admin")
    elif isinstance(message, Drain):
        conn.draining = True
        await store.put_worker(conn.view(), cfg.heartbeat_timeout)
        # Every job dispatched before this point reached the worker before this answer.
        await conn.send({"type": "draining", "running": sorted(conn.running)})
        log.info("worker_draining", worker=conn.consumer, running=list(conn.running))
    elif isinstance(message, JobRelease):
        await _release(app, conn, message)
    else:
        await _result(app, conn, message)
    return True


async def _still_staked(app: web.Application, conn: WorkerConn) -> bool:
    """False when a trainer's account no longer holds a trainer stake (asked at most every `stake_recheck` seconds):
    the worker is refused, as its next login would be, since its commitments would revert. An RPC that fails, or
    takes over 10 s, keeps the worker (asked again after `stake_recheck`): a chain node's outage must not
    disconnect every worker. A validator is not asked: its seats are drawn for it and stay its own after it asks
    to unstake (and `commitScores` takes no stake), and cutting it off would make each a no-show."""
    now = time.monotonic()
    if conn.role != "trainer" or now - conn.stake_checked < app[CONFIG].stake_recheck:
        return True
    conn.stake_checked = now
    try:
        async with asyncio.timeout(STAKE_READ_WAIT):
            staked = await app[CHAIN].tasks.functions.isStaked(conn.address, ROLES[conn.role]).call()
    except (*BACKEND_ERRORS, Web3Exception, TimeoutError) as exc:  # (a lagging node's empty answer included)
        log.warning("worker_stake_unchecked", worker=conn.consumer, error=str(exc) or type(exc).__name__)
        return True
    if staked:
        return True
    reason = f"{conn.address} no longer holds a {conn.role} stake in TrainingTasks"
    log.info("worker_unstaked", worker=conn.consumer, running=list(conn.running))
    app[METRICS].workers_cut.labels("unstaked").inc()
    await conn.send({"type": "refused", "message": reason})
    await conn.close(4001, reason.encode()[:120])
    return False


async def _result(app: web.Application, conn: WorkerConn, message: JobResult) -> None:
    job = message.job
    result = {"ok": message.ok, "detail": message.detail, "tx": message.tx, "delivery": message.delivery}
    if message.delivery is None:
        outcome = "the result names no delivery (the delivery number sent with the job)"
    else:
        outcome = await app[DISPATCHER].finish(conn, job, message.delivery, result)
    recorded = outcome == "recorded"
    ack: dict[str, Any] = {"type": "ack", "job": job, "recorded": recorded}
    if outcome in ("requeued", "dead"):  # a failed result: handed back, for another worker or the dead stream
        ack["failed"] = outcome
    elif outcome == UNPROVEN:  # the job stays the worker's: the result counts once the chain shows the commitment
        ack["retry"] = True
        ack["refused"] = (
            f"no commitment of {conn.address} to task {job.split(':')[0]} on chain yet: the result counts once it "
            f"is mined (send it again; the job stays this worker's until its time limit)"
        )
    elif outcome not in ("recorded", "duplicate"):
        ack["refused"] = outcome
    labels = {"recorded": "ok", "requeued": "error", "dead": "error", "duplicate": "duplicate", UNPROVEN: "unproven"}
    label = labels.get(outcome, "refused")
    app[METRICS].jobs.labels(_kind(job), label).inc()
    await conn.send(ack)
    log.info("job_result", job=job, worker=conn.consumer, ok=message.ok, outcome=outcome)


async def _release(app: web.Application, conn: WorkerConn, message: JobRelease) -> None:
    outcome = await app[DISPATCHER].release(conn, message.job, message.delivery)
    answer: dict[str, Any] = {"type": "released", "job": message.job, "released": outcome == "released"}
    if outcome != "released":
        answer["refused"] = outcome
    app[METRICS].jobs.labels(_kind(message.job), "released" if outcome == "released" else "refused").inc()
    await conn.send(answer)
    log.info("job_release", job=message.job, worker=conn.consumer, outcome=outcome)


def _kind(job: str) -> str:
    """A job id's kind, as the metrics label it: train or validate."""
    return "train" if ":train:" in job else "validate"
