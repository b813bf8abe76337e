"""GET /ws/worker: the workers' WebSocket. After the login (`worker_login`), a worker sends load
reports (its heartbeat) and job results; the server sends jobs (`dispatch`) and acknowledgements."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from ethml.coordinator.appkeys import CHAIN, CONFIG, DISPATCHER, METRICS, STORE
from ethml.coordinator.dispatch import WorkerConn
from ethml.coordinator.routes.worker_login import login, refuse

log = structlog.get_logger("ethml.coordinator")

routes = web.RouteTableDef()


@routes.get("/ws/worker")
async def worker_socket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    cfg, store, dispatcher = app[CONFIG], app[STORE], app[DISPATCHER]
    # Protocol pings catch dead TCP connections; a worker busy in a training job still answers them.
    ws = web.WebSocketResponse(heartbeat=max(10.0, cfg.heartbeat_interval * 3), max_msg_size=64 * 1024)
    await ws.prepare(request)
    nonce = secrets.token_hex(16)
    await ws.send_json({"type": "challenge", "nonce": nonce, "server": cfg.instance, "chain_id": app[CHAIN].chain_id})
    conn: WorkerConn | None = None
    try:
        try:
            msg = await ws.receive(timeout=10)
        except TimeoutError:
            await refuse(ws, "no login within 10 s")
            return ws
        conn = await login(app, ws, msg, nonce)
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
                await store.put_worker(conn.view(), cfg.heartbeat_timeout)
                if await store.take_kick(conn.id):
                    await ws.close(code=4003, message=b"disconnected by an admin")
            elif kind == "result" and isinstance(data.get("job"), str):
                await _result(app, conn, data)
            else:
                await ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
    finally:
        if conn is not None:
            dispatcher.conns.pop(conn.id, None)
            await store.drop_worker(conn.id)
            log.info("worker_left", worker=conn.consumer, running=list(conn.running))
    return ws


def _bounded(value: Any, low: float, high: float) -> float:
    return float(min(high, max(low, value))) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


async def _result(app: web.Application, conn: WorkerConn, data: dict[str, Any]) -> None:
    job = data["job"]
    result = {
        "ok": bool(data.get("ok")),
        "detail": data.get("detail") if isinstance(data.get("detail"), dict | list | str) else None,
        "tx": data.get("tx") if isinstance(data.get("tx"), str) else None,
        "delivery": int(data.get("delivery", 0)) if isinstance(data.get("delivery"), int) else None,
    }
    recorded = await app[DISPATCHER].finish(conn, job, result)
    kind = "train" if ":train:" in job else "validate"
    app[METRICS].jobs.labels(kind, ("ok" if result["ok"] else "error") if recorded else "duplicate").inc()
    await conn.ws.send_json({"type": "ack", "job": job, "recorded": recorded})
    log.info("job_result", job=job, worker=conn.consumer, ok=result["ok"], recorded=recorded)
