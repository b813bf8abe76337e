"""Files: datasets, test sets and model artifacts go into the coordinator's blockstore by
POST /api/files; anyone (workers, miners) fetches their raw blocks by CID from GET /ipfs/{cid}."""

from __future__ import annotations

from aiohttp import web

from ethml.coordinator.appkeys import CONFIG, IPFS, STORE
from ethml.coordinator.auth import rate_limit, required
from ethml.coordinator.edge import ApiError, read_body
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.ipfs.gateway import _block as ipfs_block

routes = web.RouteTableDef()

routes.get("/ipfs/{cid}")(ipfs_block)


@routes.post("/api/files")
async def post_file(request: web.Request) -> web.Response:
    """Add a file; needs an API key or a worker's upload token (X-Worker-Token, from its login)."""
    token = request.headers.get("X-Worker-Token")
    if token and await request.app[STORE].upload_token_valid(token):
        await rate_limit(request, None)
    else:
        who = await required(request, "requester", "admin")
        await rate_limit(request, who["key"])
    data = await read_body(request, MAX_FILE_BYTES, request.app[CONFIG].file_timeout)
    if not data:
        raise ApiError(422, "the file is empty")
    cid = request.app[IPFS].add_bytes(data, 1)
    return web.json_response({"cid": str(cid), "size": len(data)}, status=201)
