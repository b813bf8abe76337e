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

from aiohttp import web

from ethml.coordinator.appkeys import CHAIN, CONFIG, STOPPING, STORE
from ethml.coordinator.auth import rate_limit
from ethml.coordinator.background import stop_if_cancelled
from ethml.oracle import list_requests, oracle_status

routes = web.RouteTableDef()


@dataclass
class SnapshotCache:
    taken: float = 0.0
    snapshot: dict[str, Any] | None = None


SNAPSHOT = web.AppKey("dashboard_snapshot", SnapshotCache)


async def snapshot(app: web.Application) -> dict[str, Any]:
    store, chain = app[STORE], app[CHAIN]
    docs, _ = await store.list_tasks(None, None, 20)
    workers = await store.workers()
    try:
        oracle = (await oracle_status(chain.w3, chain.deployment)).as_dict()
        requests = [r.as_dict() for r in await list_requests(chain.w3, chain.deployment, last=8)]
    except Exception as exc:  # noqa: BLE001 - the dashboard shows what it can
        oracle, requests = {"error": str(exc)}, []
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


async def cached_snapshot(app: web.Application) -> dict[str, Any]:
    cache = app[SNAPSHOT]
    now = time.monotonic()
    if cache.snapshot is None or now - cache.taken > 1.0:
        cache.snapshot, cache.taken = await snapshot(app), now
    return cache.snapshot


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    html = resources.files("ethml.coordinator").joinpath("dashboard.html").read_text()
    return web.Response(text=html, content_type="text/html")


@routes.get("/api/dashboard")
async def data(request: web.Request) -> web.Response:
    await rate_limit(request, None)
    return web.json_response(await cached_snapshot(request.app))


@routes.get("/api/dashboard/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a snapshot now and every two seconds."""
    await rate_limit(request, None)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    stopping = request.app[STOPPING]
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while not stopping.is_set():
            stop_if_cancelled()  # a cancel dropped inside a Redis call (see background.py) still ends the stream
            await response.write(f"data: {json.dumps(await cached_snapshot(request.app))}\n\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 2.0)  # the next snapshot, or the server stops
    return response
