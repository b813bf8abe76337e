"""`ethml serve`: the coordinator's aiohttp application (one event loop, a cleanup context per resource).

HTTP: the REST API under /api (JSON in and out, every rejection a 4xx JSON body naming the field),
/healthz, /metrics (Prometheus), /api/openapi.json, the dashboard at /, raw IPFS blocks at /ipfs/<cid>.
WebSocket: /ws/worker, where `ethml worker` processes log in with their Ethereum key and take jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import WSMsgType, web
from eth_account.signers.local import LocalAccount
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError

from ethml.chain.deploy import Deployment
from ethml.coordinator import chain as chainmod
from ethml.coordinator.dispatch import Dispatcher, WorkerConn
from ethml.coordinator.openapi import openapi_document
from ethml.coordinator.permit import PermitDomain, recover, recover_login
from ethml.coordinator.redis_server import EmbeddedRedis
from ethml.coordinator.schemas import (
    MAX_BODY_BYTES,
    ROLES,
    STATUSES,
    ApiKeyCreate,
    TaskCreate,
    TaskImport,
    first_error,
)
from ethml.coordinator.store import Store, hash_key
from ethml.ipfs import Blockstore, IpfsClient, IpfsConfig
from ethml.ipfs.gateway import BLOCKSTORE
from ethml.ipfs.gateway import _block as ipfs_block
from ethml.oracle import list_requests, oracle_status

log = structlog.get_logger("ethml.coordinator")

MAX_FILE_BYTES = 16 * 1024 * 1024
SCORE_SCALE = 1_000_000


@dataclass
class ServeConfig:
    rpc_url: str
    deployment: Deployment
    relayer: LocalAccount
    data_dir: Path
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8545 + 1000
    #: Token buckets: requests per second and burst, per API key and per client address.
    key_rate: float = 20.0
    key_burst: int = 40
    ip_rate: float = 50.0
    ip_burst: int = 100
    heartbeat_interval: float = 3.0
    heartbeat_timeout: float = 15.0
    job_timeout: float = 30.0
    max_deliveries: int = 3
    confirmations: int = 0
    poll_interval: float = 0.5
    #: Run the relayer (create posted tasks on chain). Off only to measure the API alone.
    relay: bool = True
    instance: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(2)}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


@dataclass
class State:
    config: ServeConfig
    store: Store
    dispatcher: Dispatcher
    chain: chainmod.Chain
    domain: PermitDomain
    separator: bytes
    ipfs: IpfsClient
    metrics: Metrics
    key_cache: dict[str, tuple[float, dict[str, str] | None]] = field(default_factory=dict)
    head: int | None = None
    last_sample: float = 0.0
    snapshot: tuple[float, dict[str, Any]] | None = None
    lease: chainmod.Lock | None = None


STATE = web.AppKey("state", State)
CONFIG = web.AppKey("config", ServeConfig)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ethml_http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ethml_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.queue = Gauge("ethml_queue_depth", "Jobs and relays waiting", ["queue"], registry=self.registry)
        self.workers = Gauge(
            "ethml_workers_connected", "Workers connected to this instance", ["role"], registry=self.registry
        )
        self.worker_load = Gauge("ethml_worker_load", "Mean load of this instance's workers", registry=self.registry)
        self.chain_lag = Gauge(
            "ethml_chain_lag_blocks", "Chain head minus the follower's checkpoint", registry=self.registry
        )
        self.jobs = Counter(
            "ethml_jobs_total", "Job results by kind and outcome", ["kind", "outcome"], registry=self.registry
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count a request and its latency (the labelled children are looked up once per route and status)."""
        children = self._children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)


# ---------------------------------------------------------------------------- middleware


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"status": status, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.message, exc.field, exc.headers)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api"):
            response = _error(exc.status, exc.reason)
        else:
            raise
    except (aioredis.RedisError, OSError) as exc:
        log.warning("backend_unavailable", error=str(exc), path=request.path)
        response = _error(
            503, "a backend (Redis or the chain RPC) is unavailable; retry shortly", headers={"Retry-After": "1"}
        )
    except Exception:  # a bug: logged with its traceback here, one JSON line for the client
        log.exception("request_failed", path=request.path)
        response = _error(500, "internal error (logged by the server)")
    metrics = request.app[STATE].metrics if STATE in request.app else None
    if metrics is not None:
        metrics.observe(route, response.status, time.perf_counter() - started)
    return response


async def _principal(request: web.Request, *, required: tuple[str, ...] | None) -> dict[str, str] | None:
    """The API key's record (role, name), cached for 5 s; raises 401/403 when `required` is not met."""
    state = request.app[STATE]
    header = request.headers.get("Authorization", "")
    key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else request.headers.get("X-API-Key")
    principal = None
    if key:
        now = time.monotonic()
        cached = state.key_cache.get(key)
        if cached and cached[0] > now:
            principal = cached[1]
        else:
            record = await state.store.api_key(key)
            principal = {**record, "key": hash_key(key)} if record is not None else None
            if len(state.key_cache) > 10_000:
                state.key_cache.clear()
            state.key_cache[key] = (now + 5.0, principal)
        if principal is None:
            await _rate_limit(request, None)  # guessing keys costs tokens
            raise ApiError(401, "unknown API key")
    if required is not None:
        if principal is None:
            await _rate_limit(request, None)
            raise ApiError(401, "an API key is required (Authorization: Bearer <key>)")
        if principal["role"] not in required:
            await _rate_limit(request, principal["key"])
            raise ApiError(403, f"this needs the {' or '.join(required)} role; the key has {principal['role']}")
    return principal


def _buckets(request: web.Request, key: str | None) -> list[tuple[str, float, int]]:
    """The token buckets a request takes from: its client address's, and its API key's if it has one
    (one script call takes from both, or from neither)."""
    cfg = request.app[STATE].config
    buckets = [(f"ip:{request.remote or 'unknown'}", cfg.ip_rate, cfg.ip_burst)]
    if key is not None:
        buckets.append((f"key:{key}", cfg.key_rate, cfg.key_burst))
    return buckets


def _too_many(wait: float) -> ApiError:
    return ApiError(429, "rate limit exceeded", headers={"Retry-After": str(max(1, int(wait + 0.999)))})


async def _rate_limit(request: web.Request, key: str | None) -> None:
    wait = await request.app[STATE].store.take_token(_buckets(request, key))
    if wait > 0:
        raise _too_many(wait)


async def _json(request: web.Request, model: type[BaseModel]) -> Any:
    """The body parsed and validated in one pass by pydantic-core (no intermediate dict)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        kind = exc.errors(include_url=False)[0].get("type")
        if kind == "json_invalid":
            raise ApiError(400, "the body is not JSON") from None
        if kind == "model_type":
            raise ApiError(422, "the body must be a JSON object") from None
        where, message = first_error(exc)
        raise ApiError(422, message, where) from None


# ---------------------------------------------------------------------------- tasks


def _task_doc(who: dict[str, str], fields: dict[str, Any]) -> dict[str, Any]:
    """A new task document: `fields`, who created it and when, and no results yet."""
    return {
        **fields,
        "created_at": time.time(),
        "created_by": who["name"],
        "submissions": [],
        "votes": [],
        "transactions": {},
        "model_id": None,
        "error": None,
    }


async def post_task(request: web.Request) -> web.Response:
    """Validate, check the permit's signature, store and queue: one Redis round trip for an accepted
    task (the rate limit and the store are one script); a rejected one still takes a token."""
    state = request.app[STATE]
    who = await _principal(request, required=("requester", "admin"))
    assert who is not None
    try:
        body: TaskCreate = await _json(request, TaskCreate)
        p = body.permit
        digest = state.domain.digest(p.owner, p.value, p.nonce, p.deadline, separator=state.separator)
        signer = recover(digest, p.v, bytes.fromhex(p.r[2:]), bytes.fromhex(p.s[2:]), checksum=False)
        if signer != p.owner.lower():
            raise ApiError(
                422, "the permit signature does not recover permit.owner for this chain, token and spender", "permit"
            )
    except ApiError:
        await _rate_limit(request, who["key"])
        raise
    task_id = secrets.token_hex(16)
    doc = _task_doc(
        who,
        {
            "id": task_id,
            "status": "pending_chain",
            "chain_task_id": None,
            "requester": p.owner,
            "reward": str(body.reward),
            "validations_required": body.validations_required,
            "min_score": body.min_score,
            "submit_deadline": body.submit_deadline,
            "validation_deadline": body.validation_deadline,
            "spec_cid": None,  # the relayer stores the spec and names it by CID on chain
            "spec": body.spec.model_dump(mode="json"),
            "dataset_cid": body.dataset_cid,
            "test_set_commitment": body.test_set_commitment,
            "test_set": {"cid": body.test_set.cid, "salt": body.test_set.salt} if body.test_set else None,
            "trainers": body.trainers,
            "shape": {
                "kind": 0 if body.spec.kind == "classification" else 1,
                "decimals": body.spec.decimals,
                "features": len(body.spec.features),
            },
            "permit": {
                "owner": p.owner,
                "value": str(p.value),
                "nonce": p.nonce,
                "deadline": p.deadline,
                "v": p.v,
                "r": p.r,
                "s": p.s,
            },
        },
    )
    wait = await state.store.take_token_and_create(_buckets(request, who["key"]), doc)
    if wait > 0:
        raise _too_many(wait)
    location = f"/api/tasks/{task_id}"
    return web.Response(
        body=orjson.dumps({"id": task_id, "status": "pending_chain", "location": location}),
        status=201,
        content_type="application/json",
        headers={"Location": location},
    )


async def import_task(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = await _principal(request, required=("requester", "admin"))
    assert who is not None
    await _rate_limit(request, who["key"])
    body: TaskImport = await _json(request, TaskImport)
    chain = state.chain
    try:
        t = await chain.tasks.functions.getTask(body.chain_task_id).call()
    except (ContractCustomError, ContractLogicError):  # UnknownTask
        t = None
    if t is None or int(t[7]) == 0:
        raise ApiError(404, f"TrainingTasks has no task {body.chain_task_id}", "chain_task_id")
    known = await state.store.task_by_chain_id(body.chain_task_id)
    if known is not None:
        raise ApiError(409, f"task {body.chain_task_id} is already tracked as {known['id']}", "chain_task_id")
    doc = _task_doc(
        who,
        {
            "id": f"chain-{body.chain_task_id}",
            "status": "open",
            "chain_task_id": body.chain_task_id,
            "requester": t[0],
            "reward": str(int(t[1])),
            "validations_required": int(t[5]),
            "min_score": int(t[4]) / SCORE_SCALE,
            "submit_deadline": int(t[2]),
            "validation_deadline": int(t[3]),
            "spec_cid": t[14],
            "dataset_cid": t[13],
            "trainers": body.trainers,
        },
    )
    if not await state.store.import_task(doc):
        raise ApiError(409, f"task {body.chain_task_id} is already tracked", "chain_task_id")
    await chainmod.task_opened(state.store, doc)
    # Events since its creation (submissions, reveal, votes) arrive through the follower's next pass only
    # if they are newer than the checkpoint; replay the task's own history now.
    await _replay_task(state, body.chain_task_id)
    location = f"/api/tasks/{doc['id']}"
    return web.json_response(
        {"id": doc["id"], "status": doc["status"], "location": location}, status=201, headers={"Location": location}
    )


async def _replay_task(state: State, chain_task_id: int) -> None:
    chain = state.chain
    for name in chainmod.EVENTS:
        event = getattr(chain.tasks.events, name)()
        logs = await event.get_logs(from_block=chain.deployment.block, argument_filters={"taskId": chain_task_id})
        for entry in logs:
            await chainmod.apply_event(
                chain, state.store, name, dict(entry["args"]), "0x" + bytes(entry["transactionHash"]).hex()
            )


PUBLIC_FIELDS = (
    "id", "status", "chain_task_id", "requester", "reward", "validations_required", "min_score",
    "submit_deadline", "validation_deadline", "spec_cid", "dataset_cid", "created_at", "submissions",
    "votes", "transactions", "model_id", "error",
)  # fmt: skip


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A task document without what must not leave the server (the test-set secret, signed raw txs)."""
    out = {k: doc.get(k) for k in PUBLIC_FIELDS}
    out["submissions"] = [s for s in doc.get("submissions", []) if s]
    return out


async def get_task(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _rate_limit(request, None)
    doc = await state.store.task(request.match_info["task_id"])
    if doc is None:
        raise ApiError(404, f"no task {request.match_info['task_id']}", "task_id")
    return web.json_response(public(doc))


async def list_tasks(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _rate_limit(request, None)
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(422, f"status must be one of {', '.join(STATUSES)}", "status")
    cursor_raw = request.query.get("cursor")
    try:
        cursor = float(cursor_raw) if cursor_raw else None
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise ApiError(422, "cursor must be a number and limit an integer", "cursor") from None
    if not 1 <= limit <= 200:
        raise ApiError(422, "limit must be 1..200", "limit")
    docs, nxt = await state.store.list_tasks(status, cursor, limit)
    return web.json_response(
        {"tasks": [public(d) for d in docs], "next_cursor": repr(nxt) if nxt is not None else None}
    )


async def post_file(request: web.Request) -> web.Response:
    """Add a file (dataset, test set, model artifact) to the coordinator's blockstore; workers and
    anyone else fetch it by CID from /ipfs/<cid>. Needs an API key or a worker's upload token."""
    state = request.app[STATE]
    token = request.headers.get("X-Worker-Token")
    key = None
    if token and await state.store.redis.exists(f"ethml:uploadtoken:{token}"):
        await _rate_limit(request, None)
    else:
        who = await _principal(request, required=("requester", "admin"))
        assert who is not None
        key = who["key"]
        await _rate_limit(request, key)
    if request.content_length is not None and request.content_length > MAX_FILE_BYTES:
        raise ApiError(413, f"files are limited to {MAX_FILE_BYTES} bytes")
    data = await request.read()
    if not data:
        raise ApiError(422, "the file is empty")
    cid = state.ipfs.add_bytes(data, 1)
    return web.json_response({"cid": str(cid), "size": len(data)}, status=201)


# ---------------------------------------------------------------------------- keys and workers


async def create_key(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = await _principal(request, required=("admin",))
    assert who is not None
    await _rate_limit(request, who["key"])
    body: ApiKeyCreate = await _json(request, ApiKeyCreate)
    key = await state.store.add_api_key(body.name, body.role)
    return web.json_response({"name": body.name, "role": body.role, "key": key}, status=201)


async def list_workers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = await _principal(request, required=("admin",))
    assert who is not None
    await _rate_limit(request, who["key"])
    return web.json_response({"workers": await state.store.workers()})


async def kick_worker(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = await _principal(request, required=("admin",))
    assert who is not None
    await _rate_limit(request, who["key"])
    worker_id = request.match_info["worker_id"]
    if not await state.store.kick(worker_id):
        raise ApiError(404, f"no connected worker {worker_id}", "worker_id")
    conn = state.dispatcher.conns.get(worker_id)
    if conn is not None:
        await conn.ws.close(code=4003, message=b"disconnected by an admin")
    return web.json_response({"disconnected": worker_id}, status=202)


async def worker_socket(request: web.Request) -> web.WebSocketResponse:
    """Login: the server sends a fresh nonce; the worker signs it (EIP-191) with its role; the server
    checks the signature and the stake on chain. Then load reports, jobs and results."""
    state = request.app[STATE]
    cfg = state.config
    # Protocol pings catch dead TCP connections; a worker busy in a training job still answers them.
    ws = web.WebSocketResponse(heartbeat=max(10.0, cfg.heartbeat_interval * 3), max_msg_size=64 * 1024)
    await ws.prepare(request)
    nonce = secrets.token_hex(16)
    await ws.send_json({"type": "challenge", "nonce": nonce, "server": cfg.instance, "chain_id": state.chain.chain_id})
    conn: WorkerConn | None = None
    try:
        try:
            msg = await ws.receive(timeout=10)
        except TimeoutError:
            await _refuse(ws, "no login within 10 s")
            return ws
        conn = await _login(state, ws, msg, nonce)
        if conn is None:
            return ws
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            try:
                data = json.loads(msg.data)
                kind = data.get("type")
            except (ValueError, AttributeError):
                await ws.send_json({"type": "error", "message": "messages are JSON objects"})
                continue
            conn.last_seen = time.monotonic()
            if kind == "load":
                conn.cpu = _bounded(data.get("cpu"), 0, 100)
                conn.memory = _bounded(data.get("memory"), 0, 100)
                await state.store.put_worker(conn.view(), cfg.heartbeat_timeout)
                if await state.store.take_kick(conn.id):
                    await ws.close(code=4003, message=b"disconnected by an admin")
            elif kind == "result" and isinstance(data.get("job"), str):
                await _result(state, conn, data)
            else:
                await ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
    finally:
        if conn is not None:
            state.dispatcher.conns.pop(conn.id, None)
            await state.store.drop_worker(conn.id)
            log.info("worker_left", worker=conn.consumer, running=list(conn.running))
    return ws


def _bounded(value: Any, low: float, high: float) -> float:
    return float(min(high, max(low, value))) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


async def _refuse(ws: web.WebSocketResponse, reason: str) -> None:
    await ws.send_json({"type": "refused", "message": reason})
    await ws.close(code=4001, message=reason.encode()[:120])


async def _login(state: State, ws: web.WebSocketResponse, msg: Any, nonce: str) -> WorkerConn | None:
    cfg = state.config
    if msg.type != WSMsgType.TEXT:
        await _refuse(ws, "expected a login message")
        return None
    try:
        data = json.loads(msg.data)
        role, address, signature = data["role"], data["address"], data["signature"]
        worker_id = str(data.get("worker_id") or uuid.uuid4().hex)
        capacity = int(data.get("capacity", 1))
    except (ValueError, KeyError, TypeError):
        await _refuse(ws, "the login needs role, address and signature")
        return None
    if role not in ROLES or not 1 <= capacity <= 16 or not 1 <= len(worker_id) <= 64:
        await _refuse(ws, "role must be trainer or validator, capacity 1..16, worker_id at most 64 characters")
        return None
    signer = recover_login(cfg.instance, nonce, role, signature)
    if signer is None or not isinstance(address, str) or signer.lower() != address.lower():
        await _refuse(ws, "the signature does not recover the address for this server's nonce")
        return None
    if not await state.store.redis.set(f"ethml:loginnonce:{nonce}", signer, nx=True, ex=3600):
        await _refuse(ws, "this login was used already")
        return None
    role_code = 0 if role == "trainer" else 1
    if not await state.chain.tasks.functions.isStaked(signer, role_code).call():
        await _refuse(ws, f"{signer} holds no {role} stake in TrainingTasks (ethml stake --role {role})")
        return None
    conn = WorkerConn(worker_id, signer, role, ws, capacity, cfg.instance)
    old = state.dispatcher.conns.get(worker_id)
    if old is not None and old.address == signer:
        await old.ws.close(code=4000, message=b"replaced by a new connection")
    state.dispatcher.adopt(conn, await state.dispatcher.pending_of(conn))
    state.dispatcher.conns[worker_id] = conn
    await state.store.put_worker(conn.view(), cfg.heartbeat_timeout)
    token = secrets.token_urlsafe(24)
    await state.store.redis.set(f"ethml:uploadtoken:{token}", signer, ex=24 * 3600)
    await ws.send_json(
        {
            "type": "welcome",
            "worker_id": worker_id,
            "address": signer,
            "role": role,
            "heartbeat": cfg.heartbeat_interval,
            "upload_token": token,
            "running": list(conn.running),
        }
    )
    log.info("worker_joined", worker=conn.consumer, role=role, adopted=list(conn.running))
    return conn


async def _result(state: State, conn: WorkerConn, data: dict[str, Any]) -> None:
    job = data["job"]
    result = {
        "ok": bool(data.get("ok")),
        "detail": data.get("detail") if isinstance(data.get("detail"), dict | list | str) else None,
        "tx": data.get("tx") if isinstance(data.get("tx"), str) else None,
        "delivery": int(data.get("delivery", 0)) if isinstance(data.get("delivery"), int) else None,
    }
    recorded = await state.dispatcher.finish(conn, job, result)
    kind = "train" if ":train:" in job else "validate"
    state.metrics.jobs.labels(kind, ("ok" if result["ok"] else "error") if recorded else "duplicate").inc()
    await conn.ws.send_json({"type": "ack", "job": job, "recorded": recorded})
    log.info("job_result", job=job, worker=conn.consumer, ok=result["ok"], recorded=recorded)


# ---------------------------------------------------------------------------- health, metrics, dashboard


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    redis_ok = True
    try:
        await state.store.redis.ping()
    except (aioredis.RedisError, OSError):
        redis_ok = False
    body = {
        "ok": redis_ok and state.head is not None,
        "redis": redis_ok,
        "chain_block": state.head,
        "instance": state.config.instance,
    }
    return web.json_response(body, status=200 if body["ok"] else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=generate_latest(state.metrics.registry), content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def dashboard(request: web.Request) -> web.Response:
    html = resources.files("ethml.coordinator").joinpath("dashboard.html").read_text()
    return web.Response(text=html, content_type="text/html")


async def snapshot(state: State) -> dict[str, Any]:
    docs, _ = await state.store.list_tasks(None, None, 20)
    workers = await state.store.workers()
    try:
        oracle = (await oracle_status(state.chain.w3, state.chain.deployment)).as_dict()
        requests = [r.as_dict() for r in await list_requests(state.chain.w3, state.chain.deployment, last=8)]
    except Exception as exc:  # noqa: BLE001 - the dashboard shows what it can
        oracle, requests = {"error": str(exc)}, []
    return {
        "instance": state.config.instance,
        "time": time.time(),
        "chain_block": state.head,
        "tasks": [
            {k: d.get(k) for k in ("id", "status", "chain_task_id", "reward", "model_id", "created_at")}
            | {"submissions": len([s for s in d.get("submissions", []) if s]), "votes": len(d.get("votes", []))}
            for d in docs
        ],
        "counts": await state.store.count_tasks(),
        "workers": [
            {k: w[k] for k in ("address", "role", "running", "capacity", "cpu", "memory", "load")} for w in workers
        ],
        "queue": await state.store.queue_depth(),
        "oracle": oracle,
        "requests": requests,
        "history": await state.store.samples(),
    }


async def cached_snapshot(state: State) -> dict[str, Any]:
    """One snapshot a second at most, however many dashboards watch."""
    now = time.monotonic()
    if state.snapshot is None or now - state.snapshot[0] > 1.0:
        state.snapshot = (now, await snapshot(state))
    return state.snapshot[1]


async def dashboard_json(request: web.Request) -> web.Response:
    await _rate_limit(request, None)
    return web.json_response(await cached_snapshot(request.app[STATE]))


async def dashboard_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a snapshot now and every two seconds."""
    state = request.app[STATE]
    await _rate_limit(request, None)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while True:
            await response.write(f"data: {json.dumps(await cached_snapshot(state))}\n\n".encode())
            await asyncio.sleep(2.0)
    return response


# ---------------------------------------------------------------------------- background work


async def _forever(name: str, interval: float, step: Callable[[], Awaitable[None]]) -> None:
    backoff = interval
    while True:
        try:
            await step()
            backoff = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a backend outage: log, back off, carry on
            log.warning(f"{name}_failed", error=str(exc), retry_in=round(backoff, 2))
            backoff = min(max(backoff * 2, 0.5), 10.0)
        await asyncio.sleep(backoff)


async def _lead(state: State) -> None:
    """The follower and the keeper run on one instance at a time (a renewed Redis lease)."""
    if state.lease is None:
        state.lease = chainmod.Lock(state.store, "leader", ttl=10)
    if not await state.lease.acquire(wait=0):
        return
    checkpoint = await chainmod.follow(state.chain, state.store, state.config.confirmations)
    if state.head is not None:
        state.metrics.chain_lag.set(max(0, state.head - checkpoint))
    await chainmod.keep_deadlines(state.chain, state.store)


async def _observe(state: State) -> None:
    state.head = int(await state.chain.w3.eth.block_number)
    depth = await state.store.queue_depth()
    for name, value in depth.items():
        state.metrics.queue.labels(name).set(value)
    conns = list(state.dispatcher.conns.values())
    for role in ROLES:
        state.metrics.workers.labels(role).set(sum(1 for c in conns if c.role == role))
    load = sum(c.load for c in conns) / len(conns) if conns else 0.0
    state.metrics.worker_load.set(load)
    now = time.time()
    if now - state.last_sample >= 10:
        state.last_sample = now
        workers = await state.store.workers()
        await state.store.add_sample(
            {
                "t": now,
                "queue": depth["trainer"] + depth["validator"],
                "load": sum(w["load"] for w in workers) / len(workers) if workers else 0.0,
                "workers": len(workers),
            }
        )
    # Workers that stopped heartbeating (their socket may linger): drop them; their jobs time out.
    for conn in conns:
        if time.monotonic() - conn.last_seen > state.config.heartbeat_timeout:
            log.warning("worker_silent", worker=conn.consumer)
            await conn.ws.close(code=4002, message=b"no heartbeat")


# ---------------------------------------------------------------------------- the application


async def _admin_key(store: Store, path: Path) -> None:
    """The first start on a Redis creates an admin key, written (0600) to `path` and never stored in clear."""
    if await store.has_admin_key():
        return
    key = await store.add_api_key("admin", "admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("admin_key_created", file=str(path))


def make_app(config: ServeConfig) -> web.Application:
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=MAX_FILE_BYTES + 1024)
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    r = app.router
    r.add_get("/", dashboard)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics_endpoint)
    r.add_get("/api/openapi.json", openapi)
    r.add_post("/api/tasks", post_task)
    r.add_get("/api/tasks", list_tasks)
    r.add_post("/api/tasks/import", import_task)
    r.add_get("/api/tasks/{task_id}", get_task)
    r.add_post("/api/files", post_file)
    r.add_post("/api/keys", create_key)
    r.add_get("/api/workers", list_workers)
    r.add_delete("/api/workers/{worker_id}", kick_worker)
    r.add_get("/api/dashboard", dashboard_json)
    r.add_get("/api/dashboard/events", dashboard_stream)
    r.add_get("/ws/worker", worker_socket)
    r.add_get("/ipfs/{cid}", ipfs_block)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    embedded = None
    if cfg.redis_url is None:
        embedded = EmbeddedRedis(cfg.data_dir / "coordinator" / "redis")
        await embedded.start()
        redis = aioredis.Redis(unix_socket_path=str(embedded.socket), health_check_interval=10)
    else:
        redis = aioredis.Redis.from_url(cfg.redis_url, health_check_interval=10)
    w3 = AsyncWeb3(AsyncHTTPProvider(cfg.rpc_url, request_kwargs={"timeout": 30}))
    tasks: list[asyncio.Task[None]] = []
    try:
        store = Store(redis)
        await store.setup()
        chain = await chainmod.Chain.connect(w3, cfg.deployment, cfg.relayer)
        assert cfg.deployment.training is not None
        domain = PermitDomain(chain.chain_id, cfg.deployment.token, cfg.deployment.training)
        blockstore = Blockstore(cfg.data_dir / "blocks")
        app[BLOCKSTORE] = blockstore
        state = State(
            config=cfg,
            store=store,
            dispatcher=Dispatcher(store, cfg.instance, job_timeout=cfg.job_timeout, max_deliveries=cfg.max_deliveries),
            chain=chain,
            domain=domain,
            separator=domain.separator,
            ipfs=IpfsClient(blockstore, IpfsConfig()),
            metrics=Metrics(),
        )
        app[STATE] = state
        state.head = int(await w3.eth.block_number)
        await _admin_key(store, cfg.data_dir / "coordinator" / "admin.key")
        tasks = [
            asyncio.create_task(_forever("leader", cfg.poll_interval, lambda: _lead(state)), name="leader"),
            asyncio.create_task(_forever("dispatch", cfg.poll_interval, state.dispatcher.run_pass), name="dispatch"),
            asyncio.create_task(_forever("observe", 1.0, lambda: _observe(state)), name="observe"),
        ]
        if cfg.relay:
            tasks.append(
                asyncio.create_task(chainmod.relayer_loop(chain, store, state.ipfs, cfg.instance), name="relayer")
            )
        yield
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=10)
            if stuck:
                log.warning("shutdown_stuck", tasks=[t.get_name() for t in stuck])
        for conn in list(app[STATE].dispatcher.conns.values()) if STATE in app else []:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"server shutting down"), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(redis.aclose(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(w3.provider.disconnect(), 5)  # type: ignore[attr-defined]
        if embedded is not None:
            embedded.stop()
