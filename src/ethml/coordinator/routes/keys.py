"""API keys: an admin creates requester and admin keys (shown once; only their hash is stored)."""

from __future__ import annotations

from aiohttp import web

from ethml.coordinator.appkeys import STORE
from ethml.coordinator.auth import rate_limit, required
from ethml.coordinator.edge import read_json
from ethml.coordinator.schemas import ApiKeyCreate

routes = web.RouteTableDef()


@routes.post("/api/keys")
async def create_key(request: web.Request) -> web.Response:
    who = await required(request, "admin")
    await rate_limit(request, who["key"])
    body: ApiKeyCreate = await read_json(request, ApiKeyCreate)
    key = await request.app[STORE].add_api_key(body.name, body.role)
    return web.json_response({"name": body.name, "role": body.role, "key": key}, status=201)
