"""The dashboard: the page at /, its data at /api/dashboard and its live updates as server-sent
events at /api/dashboard/events (one snapshot a second at most, however many dashboards watch)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
from aiohttp import web

from ethml.coordinator.appkeys import CHAIN, CONFIG, STOPPING, STORE
from ethml.coordinator.auth import rate_limit
from ethml.coordinator.background import SharedCall, stop_if_cancelled
from ethml.oracle import list_requests, oracle_status
from ethml.urls import redact_urls

log = structlog.get_logger("ethml.coordinator")
routes = web.RouteTableDef()


@dataclass
class SnapshotCache:
    taken: float = 0.0
    snapshot: dict[str, Any] | None = None
    #: The snapshot as an event of the stream, encoded once for every stream.
    event: bytes = b""
    #: The snapshot being taken, shared by every request that finds the cache stale meanwhile.
    taking: SharedCall[None] | None = None
    #: The last snapshot could not read the oracle (logged once until it can again).
    oracle_failing: bool = False


SNAPSHOT = web.AppKey("dashboard_snapshot", SnapshotCache)
#: Seconds a snapshot may take before the requests waiting for it fail (a 503), and the next one takes another.
SNAPSHOT_WAIT = 30.0


async def snapshot(app: web.Application) -> dict[str, Any]:
    store, chain = app[STORE], app[CHAIN]
    docs, _ = await store.list_tasks(None, None, 20)
    workers = await store.workers()
    try:
        oracle = (await oracle_status(chain.w3, chain.deployment)).as_dict()
        requests = [r.as_dict() for r in await list_requests(chain.w3, chain.deployment, last=8)]
    except Exception as exc:  # noqa: BLE001 - the dashboard shows what it can
        # Not the error's text: the dashboard is public, and a failed RPC call's text names the endpoint's URL,
        # whose path or query often holds the provider's key. Logged when it starts failing.
        cache = app[SNAPSHOT]
        if not cache.oracle_failing:
            log.warning("dashboard_oracle_unreadable", error=redact_urls(str(exc) or type(exc).__name__))
        cache.oracle_failing = True
        oracle, requests = {"error": "the oracle could not be read from the chain RPC (logged by the server)"}, []
    else:
        app[SNAPSHOT].oracle_failing = False
    return {
        "instance": app[CONFIG].instance,
        "time": time.time(),
        "chain_block": chain.head,
        "tasks": [
            {k: d.get(k) for k in ("id", "status", "chain_task_id", "reward", "model_id", "created_at")}
            | {"submissions": len([s for s in d.get("submissions", []) if s]), "votes": len(d.get("votes", []))}
            for d in docs
        ],
        "counts": await store.count_tasks(),
        "workers": [
            {
                k: w.get(k)
                for k in ("address", "role", "running", "capacity", "cpu", "memory", "load", "cluster", "draining")
            }
            for w in workers
        ],
        "queue": await store.queue_depth(),
        "oracle": oracle,
        "requests": requests,
        "history": await store.samples(),
    }


async def cached_snapshot(app: web.Application) -> SnapshotCache:
    """The cache, with a snapshot at most a second old. However many requests find it stale at once, one
    snapshot is taken for all of them."""
    cache = app[SNAPSHOT]
    if cache.snapshot is None or time.monotonic() - cache.taken > 1.0:
        if cache.taking is None:

            async def take() -> None:
                async with asyncio.timeout(SNAPSHOT_WAIT):  # one that hangs would hold every viewer
                    taken = await snapshot(app)
                cache.snapshot, cache.event = taken, f"data: {json.dumps(taken)}\n\n".encode()
                cache.taken = time.monotonic()

            cache.taking = SharedCall(take)
        await cache.taking()
    assert cache.snapshot is not None
    return cache


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    html = resources.files("ethml.coordinator").joinpath("dashboard.html").read_text()
    return web.Response(text=html, content_type="text/html")


@routes.get("/api/dashboard")
async def data(request: web.Request) -> web.Response:
    await rate_limit(request, None)
    return web.json_response((await cached_snapshot(request.app)).snapshot)


@routes.get("/api/dashboard/events", allow_head=False)
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a snapshot now and every two seconds (GET only: a HEAD would be answered with the
    endless stream aiohttp does not hold back)."""
    await rate_limit(request, None)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    stopping = request.app[STOPPING]
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while not stopping.is_set():
            stop_if_cancelled()  # a cancel dropped inside a Redis call (see background.py) still ends the stream
            await response.write((await cached_snapshot(request.app)).event)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 2.0)  # the next snapshot, or the server stops
    return response
