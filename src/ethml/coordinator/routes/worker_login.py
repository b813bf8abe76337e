"""How a worker logs in on /ws/worker: the server sends a fresh nonce; the worker answers with its
role, address and an EIP-191 signature of (server instance, role, nonce); the server checks that the
signature recovers the address, that the nonce is used once, and that the address holds a stake of
that role in TrainingTasks. A worker that reconnects under the same id gets its pending jobs back.
Logins are rate-limited per client address (each costs a chain call and a Redis write), at the
handshake: one over the limit is answered HTTP 429 and never upgraded."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from ethml.coordinator.appkeys import CHAIN, CONFIG, DISPATCHER, STORE
from ethml.coordinator.auth import buckets, client_bucket, too_many
from ethml.coordinator.dispatch import WorkerConn
from ethml.coordinator.permit import recover_login
from ethml.coordinator.schemas import WorkerLogin
from ethml.training.onchain import ROLES

log = structlog.get_logger("ethml.coordinator")


async def take_login_token(request: web.Request) -> None:
    """A token from the client address's requests and from its logins, or a 429 (before the upgrade)."""
    cfg = request.app[CONFIG]
    logins = (f"login:{client_bucket(request, cfg.trusted_proxies)}", cfg.login_rate, cfg.login_burst)
    wait = await request.app[STORE].take_token([*buckets(request, None), logins])
    if wait > 0:
        raise too_many(wait)


#: Seconds a refused or unavailable connection is given for the close to reach the client before it is cut: aiohttp
#: waits for the client's own close frame, reading and dropping what comes meanwhile at the line's rate (245 MB in
#: 2 s from one client refused at its login, a core's worth of work for each refusal an address's login rate allows).
REFUSAL_LINGER = 0.2

#: Seconds the login's stake check (and the recheck on load reports) may wait for the chain RPC: past it the
#: worker is told `unavailable` and tries again (web3's five tries of 30 s held a login 155 s on a node that
#: accepted connections and never answered).
STAKE_READ_WAIT = 10.0


async def refuse(ws: web.WebSocketResponse, reason: str, transport: asyncio.Transport | None) -> None:
    """Refuse the login (the worker exits: retrying will not help); a worker gone already hears nothing."""
    await _close(ws, {"type": "refused", "message": reason}, 4001, transport)


async def unavailable(ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
    """Redis or the chain RPC failed while the worker was served: it is told so and closed with 1013 (try
    again later), and reconnects with backoff (the upgraded socket takes no HTTP 503)."""
    message = "a backend (Redis or the chain RPC) is unavailable; retry shortly"
    await _close(ws, {"type": "unavailable", "message": message}, 1013, transport)


async def _close(
    ws: web.WebSocketResponse, message: dict[str, str], code: int, transport: asyncio.Transport | None
) -> None:
    """Send `message` and the close, and cut the connection REFUSAL_LINGER seconds later whether or not the client
    answered the close (a worker takes the code from the close it received)."""
    if transport is not None:
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)  # (a no-op once it is closed)
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client hung up meanwhile
        await ws.send_json(message)
        await ws.close(code=code, message=message["message"].encode()[:120])


def _login_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = str(err["loc"][0])[:100] if err.get("loc") else ""  # (an unknown field's name is the client's: cut)
    if err["type"] in ("json_invalid", "model_type", "missing") or where in ("address", "signature"):
        return "the login needs role, address and signature (a 0x-address and a 0x-hex signature)"
    if where == "role":
        return "role must be trainer or validator"
    if where == "capacity":
        return "capacity must be an integer 1..16"
    if where == "worker_id":
        return "worker_id must be 1-64 letters, digits, '.', '_' or '-'"
    return f"invalid login: {where}: {err['msg']}"


async def login(
    app: web.Application, ws: web.WebSocketResponse, msg: Any, nonce: str, transport: asyncio.Transport | None
) -> WorkerConn | None:
    """The worker's connection once its login message `msg` checks out, else None (refused and closed)."""
    cfg, store, dispatcher = app[CONFIG], app[STORE], app[DISPATCHER]
    if msg.type != WSMsgType.TEXT:
        await refuse(ws, "expected a login message", transport)
        return None
    try:
        data = WorkerLogin.model_validate_json(msg.data)
    except ValidationError as exc:
        await refuse(ws, _login_error(exc), transport)
        return None
    role, address, signature = data.role, data.address, data.signature
    worker_id, capacity = data.worker_id or uuid.uuid4().hex, data.capacity
    signer = recover_login(cfg.instance, nonce, role, signature)
    if signer is None or signer.lower() != address.lower():
        await refuse(ws, "the signature does not recover the address for this server's nonce", transport)
        return None
    if not await store.use_login_nonce(nonce, signer):
        await refuse(ws, "this login was used already", transport)
        return None
    async with asyncio.timeout(STAKE_READ_WAIT):  # a node that never answers: `unavailable`, not a 155 s wait
        staked = await app[CHAIN].tasks.functions.isStaked(signer, ROLES[role]).call()
    if not staked:
        await refuse(ws, f"{signer} holds no {role} stake in TrainingTasks (ethml stake --role {role})", transport)
        return None
    conn = WorkerConn(worker_id, signer, role, ws, capacity, cfg.instance, transport=transport)
    others = sum(1 for c in dispatcher.conns.values() if c.address == signer and c.consumer != conn.consumer)
    if others >= cfg.worker_connections:  # (a worker's own earlier connection is replaced, not counted)
        await refuse(
            ws, f"{signer} has {others} workers connected to this server already, the most it takes", transport
        )
        return None
    # Connections are keyed by consumer name (address and id): another account's worker with the same id
    # is another worker, so no one can push a worker out of dispatch (or out of its id) by reusing its id.
    old = dispatcher.conns.get(conn.consumer)
    if old is not None:
        await old.close(4000, b"replaced by a new connection")
    resend = await dispatcher.take_over(conn, cfg.heartbeat_timeout)
    token = conn.upload_token = await store.new_upload_token(signer)
    sent = await conn.send(
        {
            "type": "welcome",
            "worker_id": worker_id,
            "address": signer,
            "role": role,
            "heartbeat": cfg.heartbeat_interval,
            "upload_token": token,
            "running": list(conn.running),
            "features": ["drain", "release"],  # what this server takes besides load reports and results
        }
    )
    for message in resend:  # assignments the old connection may have lost (see Dispatcher.adopt)
        sent = sent and await conn.send(message)
    if sent:  # the latest login again, now that it has finished (Dispatcher.join)
        for message in await dispatcher.join(conn, cfg.heartbeat_timeout):
            sent = sent and await conn.send(message)
    if not sent:  # gone, or not reading: never offered to dispatch (the latest until it expires, unless replaced)
        await store.drop_worker(conn.consumer, conn.session)
        return None
    # Only now may a dispatch pass see it: nothing (a job, a revoke) reaches the worker before its welcome
    # and the jobs sent again, so a revoke always follows the re-sent job it concerns.
    current = dispatcher.conns.get(conn.consumer)
    if current is not None and current is not old:  # a login of the same worker that ran alongside this one
        current.post_close(4000, b"replaced by a new connection")  # the newest login wins
    dispatcher.conns[conn.consumer] = conn
    log.info("worker_joined", worker=conn.consumer, role=role, adopted=list(conn.running))
    return conn
