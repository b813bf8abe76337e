"""API keys: an admin creates requester and admin keys (shown once; only their hash is stored, which is the
key's id), lists them, and revokes one."""

from __future__ import annotations

import re

from aiohttp import web

from ethml.coordinator.appkeys import STORE
from ethml.coordinator.auth import API_KEYS, rate_limit, required
from ethml.coordinator.edge import ApiError, defer_continue, read_json
from ethml.coordinator.schemas import KEY_ID, ApiKeyCreate
from ethml.coordinator.store import LastAdminKey, hash_key

routes = web.RouteTableDef()

_KEY_ID = re.compile(KEY_ID)


@routes.post("/api/keys", expect_handler=defer_continue)
async def create_key(request: web.Request) -> web.Response:
    who = await required(request, "admin")
    await rate_limit(request, who["key"])
    body: ApiKeyCreate = await read_json(request, ApiKeyCreate)
    key = await request.app[STORE].add_api_key(body.name, body.role)
    return web.json_response({"id": hash_key(key), "name": body.name, "role": body.role, "key": key}, status=201)


@routes.get("/api/keys")
async def list_keys(request: web.Request) -> web.Response:
    who = await required(request, "admin")
    await rate_limit(request, who["key"])
    return web.json_response({"keys": await request.app[STORE].api_keys()})


@routes.delete("/api/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key: refused from then on by this instance at once, by the others within their key cache's five
    seconds. The last admin key is not revoked (409): make another admin key first."""
    who = await required(request, "admin")
    await rate_limit(request, who["key"])
    key_id = request.match_info["key_id"]
    if not _KEY_ID.fullmatch(key_id):
        raise ApiError(422, "key_id must be a key's id: 64 lowercase hex digits (GET /api/keys lists them)", "key_id")
    try:
        record = await request.app[STORE].revoke_api_key(key_id)
    except LastAdminKey:
        raise ApiError(409, "this is the last admin key: create another admin key first", "key_id") from None
    if record is None:
        raise ApiError(404, f"no API key {key_id}", "key_id")
    request.app[API_KEYS].forget(key_id)
    revoked = {"id": key_id, "name": record.get("name", ""), "role": record.get("role", ""), "revoked": True}
    return web.json_response(revoked)
