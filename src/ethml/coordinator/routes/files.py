"""Files: datasets, test sets and model artifacts go into the coordinator's blockstore by
POST /api/files; anyone (workers, miners) fetches their raw blocks by CID from GET /ipfs/{cid}.

What one uploader may add is bounded: each (a worker's account, whichever of its logins' tokens it
uses, or a requester's API key; an admin's key is not counted) has a quota of bytes per hour, and no
upload may leave the blockstore's disk with less than its free-space floor. Any staked account gets an
upload token by logging in as a worker, so without these one account could fill the disk that Redis
and the blockstore share."""

from __future__ import annotations

import asyncio
import shutil

from aiohttp import web

from ethml.coordinator.appkeys import CONFIG, IPFS, STORE
from ethml.coordinator.auth import rate_limit, required
from ethml.coordinator.edge import ApiError, read_body
from ethml.coordinator.schemas import MAX_FILE_BYTES
from ethml.ipfs.gateway import _block as ipfs_block

routes = web.RouteTableDef()

routes.get("/ipfs/{cid}")(ipfs_block)

MIB = 1024 * 1024
#: An uploader's quota is refilled over an hour.
QUOTA_SECONDS = 3600


@routes.post("/api/files")
async def post_file(request: web.Request) -> web.Response:
    """Add a file; needs an API key or a worker's upload token (X-Worker-Token, from its login)."""
    cfg, store = request.app[CONFIG], request.app[STORE]
    token = request.headers.get("X-Worker-Token")
    owner = await store.upload_token_owner(token) if token else None
    if owner is not None:
        await rate_limit(request, None)
        uploader: str | None = f"upload:account:{owner.lower()}"
    else:
        who = await required(request, "requester", "admin")
        await rate_limit(request, who["key"])
        uploader = None if who["role"] == "admin" else f"upload:key:{who['key']}"
    declared = request.content_length
    if uploader is not None and declared is not None and 0 < declared <= MAX_FILE_BYTES:
        # Counted as declared, before the body is read: a refused upload costs no bandwidth or memory.
        await _take_quota(request, uploader, declared, close=True)
    data = await read_body(request, MAX_FILE_BYTES, cfg.file_timeout)
    if not data:
        raise ApiError(422, "the file is empty")
    if uploader is not None and declared is None:  # chunked: its size is known only now
        await _take_quota(request, uploader, len(data), close=False)
    ipfs = request.app[IPFS]
    free = shutil.disk_usage(ipfs.blockstore.root if ipfs.blockstore.root.exists() else cfg.data_dir).free
    if free - len(data) < cfg.min_free_disk_mib * MIB:
        raise ApiError(
            507,
            f"the coordinator's disk is nearly full (it keeps {cfg.min_free_disk_mib:g} MiB free); the file was "
            "not stored",
            headers={"Retry-After": "300"},
        )
    # Chunking, hashing and writing 16 MiB takes ~0.1 s: off the event loop, which serves everyone else.
    cid = await asyncio.to_thread(ipfs.add_bytes, data, 1)
    return web.json_response({"cid": str(cid), "size": len(data)}, status=201)


async def _take_quota(request: web.Request, uploader: str, size: int, *, close: bool) -> None:
    """Take `size` bytes from the uploader's hourly quota, or answer 429 with the wait (closing the
    connection when the body was not read)."""
    quota = request.app[CONFIG].upload_quota_mib * MIB
    wait = await request.app[STORE].take_amount(uploader, quota / QUOTA_SECONDS, quota, min(size, quota))
    if wait > 0:
        raise ApiError(
            429,
            f"upload quota exceeded: {request.app[CONFIG].upload_quota_mib:g} MiB per hour per uploader (a worker "
            f"account or an API key); {size} bytes fit in {wait:.0f} s",
            headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            close=close,
        )
