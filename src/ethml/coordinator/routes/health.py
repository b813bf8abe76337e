"""Liveness (GET /healthz: Redis answers and the chain head is known) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import generate_latest

from ethml.coordinator.appkeys import CHAIN, CONFIG, METRICS, STORE
from ethml.coordinator.background import SharedCall

routes = web.RouteTableDef()

#: Seconds the shared health PING waits for Redis's answer before the check says Redis is down.
PING_WAIT = 5.0


def redis_answers(app: web.Application) -> SharedCall[bool]:
    """Whether Redis answers a PING: one PING for all the health checks that ask while it is under way (a load
    balancer's checks, or a flood of them, cost the pool one connection, not one each)."""

    async def ping() -> bool:
        try:
            async with asyncio.timeout(PING_WAIT):  # a PING on a connection that went dark would hold every check
                await app[STORE].redis.ping()
        except (aioredis.RedisError, OSError, TimeoutError):
            return False
        return True

    return SharedCall(ping)


REDIS_ANSWERS: web.AppKey[SharedCall[bool]] = web.AppKey("redis_answers", SharedCall)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    redis_ok = await request.app[REDIS_ANSWERS]()
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
