"""Workers, for an admin: the connected ones (every instance's, from Redis) and disconnecting one."""

from __future__ import annotations

import re

from aiohttp import web

from ethml.coordinator.appkeys import DISPATCHER, STORE
from ethml.coordinator.auth import rate_limit, required
from ethml.coordinator.edge import ApiError
from ethml.coordinator.schemas import ADDRESS, WORKER_ID

routes = web.RouteTableDef()

_WORKER_ID = re.compile(WORKER_ID)
_ADDRESS = re.compile(ADDRESS)


@routes.get("/api/workers")
async def list_workers(request: web.Request) -> web.Response:
    who = await required(request, "admin")
    await rate_limit(request, who["key"])
    workers = await request.app[STORE].workers()
    trainers = sorted({w["address"].lower() for w in workers if w.get("role") == "trainer"})
    standing = await request.app[DISPATCHER].standing(trainers) if trainers else {}
    for w in workers:
        if w["address"].lower() in standing:
            w["trained"] = standing[w["address"].lower()]
    return web.json_response({"workers": workers})


@routes.delete("/api/workers/{worker_id}")
async def kick_worker(request: web.Request) -> web.Response:
    """Disconnect a worker: at once if it is connected here, else at its next load report to its
    instance (a kick order in Redis, for that connection only). Ids are the workers' own choice: with
    `?address=`, that account's worker of the id; without, the id's worker if one account uses it (409
    if more than one does)."""
    who = await required(request, "admin")
    await rate_limit(request, who["key"])
    worker_id = request.match_info["worker_id"]
    if not _WORKER_ID.fullmatch(worker_id):
        raise ApiError(422, "worker_id must be 1-64 letters, digits, '.', '_' or '-'", "worker_id")
    address = request.query.get("address")
    if address is not None and not _ADDRESS.fullmatch(address):
        raise ApiError(422, "address must be a 0x-address (40 hex digits)", "address")
    store = request.app[STORE]
    found = await store.connections(worker_id, address)
    if not found:
        whose = f" of {address}" if address is not None else ""
        raise ApiError(404, f"no connected worker {worker_id}{whose}", "worker_id")
    accounts = sorted({consumer.split(":")[0] for consumer in found})
    if address is None and len(accounts) > 1:  # never one account's worker for another's
        used = f"worker id {worker_id} is used by {len(accounts)} accounts: add ?address= ({', '.join(accounts)})"
        raise ApiError(409, used, "address")
    await store.kick(found)  # for the instance it is connected to, at its next load report
    for consumer, session in found.items():
        conn = request.app[DISPATCHER].conns.get(consumer)
        if conn is not None and conn.session == session:  # here: now, after what was sent before it
            conn.post_close(4003, b"disconnected by an admin")
    return web.json_response({"disconnected": worker_id, "workers": len(found)}, status=202)
