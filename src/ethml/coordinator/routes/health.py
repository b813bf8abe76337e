"""Liveness (GET /healthz: Redis answers and the chain head is known) and Prometheus metrics."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import generate_latest

from ethml.coordinator.appkeys import CHAIN, CONFIG, METRICS, STORE

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    redis_ok = True
    try:
        await request.app[STORE].redis.ping()
    except (aioredis.RedisError, OSError):
        redis_ok = False
    head = request.app[CHAIN].head
    body = {
        "ok": redis_ok and head is not None,
        "redis": redis_ok,
        "chain_block": head,
        "instance": request.app[CONFIG].instance,
    }
    return web.json_response(body, status=200 if body["ok"] else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry), content_type="text/plain", charset="utf-8")
